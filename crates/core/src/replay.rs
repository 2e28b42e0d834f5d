//! Sliding anti-replay window (the RFC 6479 block bitmap).
//!
//! A counter is checked before decryption (cheap rejection of replays and of
//! counters far behind) and committed only after the packet authenticated, so
//! a forged packet can never move the window.

/// Default window: 8192 packets, enough for reordering across a batch of GSO
/// segments on several cores.
pub const DEFAULT_WINDOW: u64 = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("counter {0} already received")]
    Duplicate(u64),
    #[error("counter {counter} is older than the window (newest {newest})")]
    TooOld { counter: u64, newest: u64 },
}

#[derive(Clone, Debug)]
pub struct ReplayWindow {
    blocks: Box<[u64]>,
    /// Highest counter accepted plus one; 0 while nothing was received.
    next: u64,
    window: u64,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new(DEFAULT_WINDOW)
    }
}

impl ReplayWindow {
    /// A window remembering at least `window` counters behind the newest.
    pub fn new(window: u64) -> Self {
        let window = window.max(64);
        // One spare block so the block being filled never overlaps the
        // oldest block still inside the window.
        let blocks = (window.div_ceil(64) + 1).next_power_of_two() as usize;
        Self {
            blocks: vec![0; blocks].into_boxed_slice(),
            next: 0,
            window,
        }
    }

    pub fn window(&self) -> u64 {
        self.window
    }

    /// Highest counter accepted so far.
    pub fn newest(&self) -> Option<u64> {
        self.next.checked_sub(1)
    }

    /// Would `counter` be accepted? Does not change the window.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        if counter >= self.next {
            return Ok(());
        }
        let newest = self.next - 1;
        if newest - counter >= self.window {
            return Err(ReplayError::TooOld { counter, newest });
        }
        let (block, bit) = self.position(counter);
        if self.blocks[block] & (1 << bit) != 0 {
            return Err(ReplayError::Duplicate(counter));
        }
        Ok(())
    }

    /// Checks and records `counter`; call only after the packet authenticated.
    pub fn update(&mut self, counter: u64) -> Result<(), ReplayError> {
        self.check(counter)?;
        if counter >= self.next {
            let nblocks = self.blocks.len() as u64;
            let old_block = if self.next == 0 {
                None
            } else {
                Some((self.next - 1) >> 6)
            };
            let new_block = counter >> 6;
            match old_block {
                Some(old) if new_block - old < nblocks => {
                    for b in old + 1..=new_block {
                        self.blocks[(b % nblocks) as usize] = 0;
                    }
                }
                _ => self.blocks.iter_mut().for_each(|b| *b = 0),
            }
            self.next = counter + 1;
        }
        let (block, bit) = self.position(counter);
        self.blocks[block] |= 1 << bit;
        Ok(())
    }

    fn position(&self, counter: u64) -> (usize, u32) {
        (
            ((counter >> 6) % self.blocks.len() as u64) as usize,
            (counter & 63) as u32,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn basic() {
        let mut w = ReplayWindow::new(128);
        assert!(w.update(0).is_ok());
        assert_eq!(w.update(0), Err(ReplayError::Duplicate(0)));
        assert!(w.update(5).is_ok());
        assert!(w.update(3).is_ok());
        assert!(w.update(3).is_err());
        assert!(w.update(1000).is_ok());
        assert!(matches!(w.check(5), Err(ReplayError::TooOld { .. })));
        assert!(w.check(1000 - 127).is_ok());
        assert!(w.check(1000 - 128).is_err());
        assert!(w.update(u64::MAX - 1).is_ok());
        assert!(w.check(1000).is_err());
    }

    #[test]
    fn window_is_at_least_8192_by_default() {
        let mut w = ReplayWindow::default();
        w.update(10_000).unwrap();
        assert!(w.update(10_000 - 8191).is_ok());
        assert!(w.update(10_000 - 8192).is_err());
    }

    proptest! {
        /// Against a model: accept iff never seen and within the window of the newest.
        #[test]
        fn matches_model(ops in proptest::collection::vec(0u64..2000, 1..400), window in 64u64..600) {
            let mut w = ReplayWindow::new(window);
            let window = w.window();
            let mut seen = std::collections::HashSet::new();
            let mut newest: Option<u64> = None;
            for c in ops {
                let expect = !seen.contains(&c) && newest.is_none_or(|n| c > n || n - c < window);
                prop_assert_eq!(w.update(c).is_ok(), expect, "counter {}", c);
                if expect {
                    seen.insert(c);
                    newest = Some(newest.map_or(c, |n| n.max(c)));
                }
            }
        }
    }
}
