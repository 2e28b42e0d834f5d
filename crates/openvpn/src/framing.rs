//! OpenVPN's TCP framing: every packet is preceded by its length as a
//! 16-bit big-endian integer. [`FrameDecoder`] takes the stream in chunks of
//! any size and yields whole packets.

/// Largest frame accepted by default (OpenVPN's maximum packet on TCP is
/// bounded by the 16-bit length; a real link MTU is far smaller).
pub const DEFAULT_MAX_FRAME: usize = 0xFFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("zero-length frame on the TCP stream")]
    Empty,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("packet of {0} bytes does not fit a 16-bit length")]
    Unencodable(usize),
}

/// Prepends the 16-bit length to `packet`.
pub fn encode_frame(packet: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u16::try_from(packet.len()).map_err(|_| FrameError::Unencodable(packet.len()))?;
    if len == 0 {
        return Err(FrameError::Empty);
    }
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(packet);
    Ok(())
}

/// Reassembles packets from a TCP byte stream.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    pos: usize,
    max: usize,
    failed: Option<FrameError>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME)
    }
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            pos: 0,
            max: max_frame.min(DEFAULT_MAX_FRAME),
            failed: None,
        }
    }

    /// Appends a chunk read from the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes buffered but not yet returned as a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete packet, `Ok(None)` when more bytes are needed.
    /// After an error the stream is out of sync and every later call
    /// returns the same error: the connection must be closed.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        // Compact once the consumed prefix dominates.
        if self.pos > 4096 && self.pos * 2 > self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let avail = &self.buf[self.pos..];
        if avail.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([avail[0], avail[1]]) as usize;
        let err = if len == 0 {
            Some(FrameError::Empty)
        } else if len > self.max {
            Some(FrameError::TooLong { len, max: self.max })
        } else {
            None
        };
        if let Some(e) = err {
            self.failed = Some(e);
            return Err(e);
        }
        if avail.len() < 2 + len {
            return Ok(None);
        }
        let start = self.pos + 2;
        self.pos = start + len;
        Ok(Some(&self.buf[start..start + len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arbitrary_chunking() {
        let packets: Vec<Vec<u8>> = (1..40).map(|i| vec![i as u8; i * 7]).collect();
        let mut stream = Vec::new();
        for p in &packets {
            encode_frame(p, &mut stream).unwrap();
        }
        for chunk in [1, 2, 3, 5, 64, 1000, stream.len()] {
            let mut d = FrameDecoder::default();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                d.push(c);
                while let Some(f) = d.next_frame().unwrap() {
                    got.push(f.to_vec());
                }
            }
            assert_eq!(got, packets);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = FrameDecoder::new(100);
        d.push(&[0, 200]);
        assert_eq!(
            d.next_frame(),
            Err(FrameError::TooLong { len: 200, max: 100 })
        );
        d.push(&[0; 300]);
        assert!(d.next_frame().is_err());
        let mut d = FrameDecoder::default();
        d.push(&[0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::Empty));
        assert_eq!(
            encode_frame(&[0; 70000], &mut Vec::new()),
            Err(FrameError::Unencodable(70000))
        );
    }
}
