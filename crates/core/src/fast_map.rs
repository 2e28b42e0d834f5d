//! Hash maps for the data path's lookups: keys the daemon chose or was
//! configured with, looked up per packet.
//!
//! std's `HashMap` hashes with keyed SipHash so that whoever picks the keys
//! cannot make them collide. In these maps the inserted keys are not
//! chosen by whoever sends packets: receiver indices the daemon draws at
//! random, its own peer ids and descriptors, prefixes from the
//! configuration or from an authenticated peer (an OpenVPN server's pushed
//! routes, a few hundred at most). A packet only chooses what is looked up,
//! and it can make that lookup start anywhere in the table but cannot make
//! the chains in it longer. So a multiply-and-fold hash is enough. It takes
//! a few instructions where SipHash takes about a hundred, and it leaves
//! SipHash's code and keys off a ping's path, which on a cold turn costs
//! more than the instructions do (docs/fast-path.md, "What a cold turn
//! waits on").

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A `HashMap` with [`FastHasher`]; make one with `FastMap::default()`.
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// Odd, with no structure in its bits.
const K: u64 = 0xf135_7aea_2e62_a9c5;
/// Where a hash starts, so that a zero word does not leave it at zero.
const SEED: u64 = 0x243f_6a88_85a3_08d3;

/// Per word: xor it in, then multiply to 128 bits and fold the halves
/// together (foldhash's and aHash's fallback step). Each output bit then
/// depends on every input bit, low and high. A plain multiply leaves the
/// low bits depending only on the low bits of the key, and hashbrown picks
/// the bucket from the low bits (and its 7-bit tag from the top): a run of
/// neighbouring prefixes then used half the buckets (the test below).
#[derive(Clone, Copy)]
pub struct FastHasher(u64);

impl Default for FastHasher {
    fn default() -> Self {
        FastHasher(SEED)
    }
}

impl FastHasher {
    fn add(&mut self, word: u64) {
        let p = u128::from(self.0 ^ word) * u128::from(K);
        self.0 = (p as u64) ^ ((p >> 64) as u64);
    }
}

/// The integer widths the maps' keys use get one step each (`write_i32`,
/// a descriptor, goes through `write_u32` by default); anything else is
/// taken 8 bytes at a time.
impl Hasher for FastHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u32(&mut self, i: u32) {
        self.add(i.into());
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_u128(&mut self, i: u128) {
        self.add(i as u64);
        self.add((i >> 64) as u64);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    fn hash<T: std::hash::Hash>(v: T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(v)
    }

    /// Configured prefixes are often a run of neighbours (a /24 of
    /// clients, each a /32; IPv6 /64s differing in one nibble). They must
    /// spread over buckets (low bits) and tags (top 7 bits), or every
    /// lookup would walk one long probe sequence.
    #[test]
    fn neighbouring_keys_spread_over_buckets_and_tags() {
        let base4 = u32::from_be_bytes([10, 8, 0, 0]);
        let keys4: Vec<u64> = (0..4096u32).map(|i| hash(base4 + i)).collect();
        let base6 =
            u128::from_be_bytes([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let keys6: Vec<u64> = (0..4096u128).map(|i| hash(base6 + (i << 64))).collect();
        for keys in [&keys4, &keys6] {
            let buckets: HashSet<u64> = keys.iter().map(|h| h & 4095).collect();
            // 4096 random keys into 4096 buckets fill ~63 % of them
            assert!(
                buckets.len() > 2300,
                "low bits: {} of 4096 buckets used",
                buckets.len()
            );
            let tags: HashSet<u64> = keys.iter().map(|h| h >> 57).collect();
            assert_eq!(
                tags.len(),
                128,
                "top 7 bits: {} of 128 tags used",
                tags.len()
            );
        }
    }

    #[test]
    fn a_map_finds_what_was_put_in() {
        let mut m: FastMap<u32, u32> = FastMap::default();
        for i in 0..10_000u32 {
            m.insert(i.wrapping_mul(0x9e37_79b9), i);
        }
        for i in 0..10_000u32 {
            assert_eq!(m.get(&i.wrapping_mul(0x9e37_79b9)), Some(&i));
        }
        assert_eq!(m.get(&1), None);
    }
}
