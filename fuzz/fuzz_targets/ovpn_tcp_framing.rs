//! TCP length framing: arbitrary chunking yields the same frames as one push.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_openvpn::framing::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let mut whole = FrameDecoder::new(1500);
    whole.push(stream);
    let mut a = Vec::new();
    let ea = loop {
        match whole.next_frame() {
            Ok(Some(f)) => a.push(f.to_vec()),
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let mut chunked = FrameDecoder::new(1500);
    let mut b = Vec::new();
    let mut eb = None;
    'outer: for c in stream.chunks(split.max(1) as usize) {
        chunked.push(c);
        loop {
            match chunked.next_frame() {
                Ok(Some(f)) => b.push(f.to_vec()),
                Ok(None) => break,
                Err(e) => {
                    eb = Some(e);
                    break 'outer;
                }
            }
        }
    }
    assert_eq!(a, b);
    assert_eq!(ea, eb);
});
