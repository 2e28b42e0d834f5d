//! Packet batches: one arena, fixed-stride slots with headroom and tailroom.
//!
//! Encapsulation prepends an outer header into the headroom and appends the
//! AEAD tag into the tailroom, so a payload read from the TUN device is sealed
//! and sent without ever being copied. The arena is allocated once; nothing on
//! the data path allocates per packet.

/// A view of one packet inside a larger buffer: `buf[start..end]` is the
/// packet, the bytes before `start` are headroom and after `end` tailroom.
#[derive(Debug)]
pub struct PacketBuf<'a> {
    buf: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<'a> PacketBuf<'a> {
    /// Wraps `buf`, with the packet at `buf[start..end]`.
    ///
    /// # Panics
    /// If `start > end` or `end > buf.len()`: a caller bug, never network input.
    pub fn new(buf: &'a mut [u8], start: usize, end: usize) -> Self {
        assert!(
            start <= end && end <= buf.len(),
            "packet bounds outside buffer"
        );
        Self { buf, start, end }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn headroom(&self) -> usize {
        self.start
    }

    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.end
    }

    pub fn start(&self) -> usize {
        self.start
    }

    pub fn end(&self) -> usize {
        self.end
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.end]
    }

    /// Grows the packet at the front by `n` bytes and returns them, or `None`
    /// when the headroom is too small.
    pub fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        let start = self.start.checked_sub(n)?;
        self.start = start;
        Some(&mut self.buf[start..start + n])
    }

    /// Grows the packet at the back by `n` bytes and returns them, or `None`
    /// when the tailroom is too small.
    pub fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        let end = self.end.checked_add(n).filter(|&e| e <= self.buf.len())?;
        let old = self.end;
        self.end = end;
        Some(&mut self.buf[old..end])
    }

    /// Drops `n` bytes from the front (e.g. an outer header after decryption).
    pub fn trim_front(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.start += n;
        true
    }

    /// Drops `n` bytes from the back (e.g. a tag or padding).
    pub fn trim_back(&mut self, n: usize) -> bool {
        if n > self.len() {
            return false;
        }
        self.end -= n;
        true
    }

    /// The packet and its header region split at `split` bytes from the start.
    pub fn split_at_mut(&mut self, split: usize) -> Option<(&mut [u8], &mut [u8])> {
        if split > self.len() {
            return None;
        }
        Some(self.buf[self.start..self.end].split_at_mut(split))
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    start: u32,
    end: u32,
}

/// A batch of packets in one arena.
pub struct PacketBatch {
    arena: Box<[u8]>,
    slots: Box<[Slot]>,
    stride: usize,
    headroom: usize,
    len: usize,
}

impl PacketBatch {
    /// `capacity` slots, each with `headroom` bytes before a payload of up to
    /// `max_payload` bytes and `tailroom` bytes after it.
    pub fn new(capacity: usize, headroom: usize, max_payload: usize, tailroom: usize) -> Self {
        let stride = headroom + max_payload + tailroom;
        Self {
            arena: vec![0u8; capacity * stride].into_boxed_slice(),
            slots: vec![Slot::default(); capacity].into_boxed_slice(),
            stride,
            headroom,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn headroom(&self) -> usize {
        self.headroom
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// The whole arena as one slice per slot, for a batched read that fills
    /// slot `i` at `[headroom..headroom + n_i]`; then call [`Self::set_filled`].
    pub fn slot_buffers(&mut self) -> std::slice::ChunksExactMut<'_, u8> {
        self.arena.chunks_exact_mut(self.stride)
    }

    /// Records that the first `sizes.len()` slots hold packets of those sizes
    /// starting at `offset` (the headroom the reader left free).
    pub fn set_filled(&mut self, offset: usize, sizes: &[usize]) {
        let n = sizes.len().min(self.slots.len());
        for (slot, &size) in self.slots.iter_mut().zip(sizes).take(n) {
            let end = (offset + size).min(self.stride);
            *slot = Slot {
                start: offset as u32,
                end: end as u32,
            };
        }
        self.len = n;
    }

    /// Appends one packet by copying (handshake messages, tests). Returns
    /// `false` when the batch is full or the packet does not fit a slot.
    pub fn push(&mut self, data: &[u8]) -> bool {
        if self.len == self.slots.len() || data.len() > self.stride - self.headroom {
            return false;
        }
        let base = self.len * self.stride;
        let start = self.headroom;
        self.arena[base + start..base + start + data.len()].copy_from_slice(data);
        self.slots[self.len] = Slot {
            start: start as u32,
            end: (start + data.len()) as u32,
        };
        self.len += 1;
        true
    }

    /// Packet `i` as a read-only slice.
    pub fn get(&self, i: usize) -> &[u8] {
        let s = self.slots[i];
        let base = i * self.stride;
        &self.arena[base + s.start as usize..base + s.end as usize]
    }

    /// Packet `i` as a growable view. Changes to its bounds are kept when
    /// the view is dropped through [`Self::with_packet`].
    pub fn with_packet<R>(&mut self, i: usize, f: impl FnOnce(&mut PacketBuf<'_>) -> R) -> R {
        let s = self.slots[i];
        let base = i * self.stride;
        let mut p = PacketBuf::new(
            &mut self.arena[base..base + self.stride],
            s.start as usize,
            s.end as usize,
        );
        let r = f(&mut p);
        self.slots[i] = Slot {
            start: p.start as u32,
            end: p.end as u32,
        };
        r
    }

    /// Removes packets for which `keep` is false, preserving order. Only
    /// slot bounds move when nothing is dropped; payloads are swapped, not copied,
    /// only when a dropped slot precedes a kept one.
    pub fn retain(&mut self, mut keep: impl FnMut(usize, &[u8]) -> bool) {
        let mut w = 0;
        for r in 0..self.len {
            if keep(r, self.get(r)) {
                if w != r {
                    let (a, b) = self.arena.split_at_mut(r * self.stride);
                    a[w * self.stride..(w + 1) * self.stride].copy_from_slice(&b[..self.stride]);
                    self.slots[w] = self.slots[r];
                }
                w += 1;
            }
        }
        self.len = w;
    }

    /// Are packets `i` and `i + 1` back to back in the arena (packet `i`
    /// fills its slot to the end and packet `i + 1` starts its slot)?
    /// Runs of such packets can leave in one segmented (GSO) send.
    pub fn adjacent(&self, i: usize) -> bool {
        i + 1 < self.len
            && self.slots[i].end as usize == self.stride
            && self.slots[i + 1].start == 0
    }

    /// The bytes from the start of packet `first` to the end of packet
    /// `last`; meaningful as a run of datagrams when every packet in between
    /// is [`Self::adjacent`] to the next.
    pub fn span(&self, first: usize, last: usize) -> &[u8] {
        let a = first * self.stride + self.slots[first].start as usize;
        let b = last * self.stride + self.slots[last].end as usize;
        &self.arena[a..b.max(a)]
    }

    /// Iterates over the packets.
    pub fn iter(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.len).map(move |i| self.get(i))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prepend_and_append_stay_in_slot() {
        let mut b = PacketBatch::new(2, 16, 100, 16);
        assert!(b.push(b"hello"));
        b.with_packet(0, |p| {
            p.prepend(4).unwrap().copy_from_slice(b"HDR:");
            p.append(2).unwrap().copy_from_slice(b"!!");
            assert!(p.prepend(13).is_none());
            assert_eq!(p.tailroom(), 100 + 16 - 7);
            assert!(p.append(110).is_none());
        });
        assert_eq!(b.get(0), b"HDR:hello!!");
    }

    #[test]
    fn set_filled_and_retain() {
        let mut b = PacketBatch::new(4, 8, 32, 0);
        for (i, buf) in b.slot_buffers().enumerate() {
            buf[8] = i as u8;
        }
        b.set_filled(8, &[1, 1, 1, 1]);
        b.retain(|i, _| i % 2 == 1);
        assert_eq!(b.len(), 2);
        assert_eq!(b.get(0), &[1]);
        assert_eq!(b.get(1), &[3]);
    }

    #[test]
    fn full_slots_are_adjacent_and_span_contiguously() {
        // Stride 16: a 4-byte payload grows to a full slot with a 4-byte
        // header and an 8-byte trailer.
        let mut b = PacketBatch::new(3, 4, 4, 8);
        for _ in 0..3 {
            b.push(b"abcd");
        }
        for i in 0..2 {
            b.with_packet(i, |p| {
                p.prepend(4).unwrap().copy_from_slice(b"HHHH");
                p.append(8).unwrap().copy_from_slice(b"TTTTTTTT");
            });
        }
        assert!(b.adjacent(0));
        assert!(!b.adjacent(1), "packet 2 was not grown to the slot start");
        assert_eq!(b.span(0, 1), b"HHHHabcdTTTTTTTTHHHHabcdTTTTTTTT");
        assert!(!b.adjacent(2));
    }

    #[test]
    fn push_rejects_oversize() {
        let mut b = PacketBatch::new(1, 8, 4, 4);
        assert!(!b.push(&[0; 9]));
        assert!(b.push(&[0; 8]));
        assert!(!b.push(&[0; 1]));
    }
}
