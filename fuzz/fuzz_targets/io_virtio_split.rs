//! TUN reads: any virtio-net header and packet (what the kernel hands over
//! for locally sent and forwarded traffic) is split into slots or refused,
//! without panicking and without writing past a slot.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes choose the batch: how many slots, and how large
    // (small slots make segments not fit, few slots make NeedBufs).
    let [a, b, rest @ ..] = data else {
        return;
    };
    let bufs = usize::from(*a % 64) + 1;
    let slot = 64 + usize::from(*b) * 8;
    let offset = usize::from(*b % 4) * 16;
    let mut raw = rest.to_vec();
    polytun_io::fuzz_virtio_split(&mut raw, bufs, slot, offset);
});
