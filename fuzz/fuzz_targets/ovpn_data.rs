//! P_DATA_V2 (the data-packet parser and opening): arbitrary bytes never
//! panic and never open under a key; the header parses consistently; a
//! sealed payload opens to itself once and not twice, under each
//! compression framing; taking a framing off arbitrary bytes, and
//! decompressing them, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_core::{Limits, PacketBuf};
use polytun_openvpn::compress::{decompress, Compressor, Framing, FramingError};
use polytun_openvpn::data::{Cipher, DataChannelKey, DataError, DataKeys, Opened, OVERHEAD};
use polytun_openvpn::packet::{parse_packet, DataV2Header, Packet};
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    if let Ok(h) = DataV2Header::parse(data) {
        assert_eq!(parse_packet(data), Ok(Packet::DataV2(h)));
        let mut w = data[..8].to_vec();
        h.write(&mut w);
        assert_eq!(w, data[..8]);
    }
    let framing = Framing::ALL[data.get(2).map_or(0, |b| usize::from(b % 7))];
    // What a peer compressed: decompressed within the buffer, or refused.
    let mut out = [0u8; 2048];
    for algo in [Compressor::Lzo, Compressor::Lz4] {
        if let Ok(n) = decompress(algo, data, &mut out) {
            assert!(n <= out.len());
        }
    }
    {
        let mut buf = data.to_vec();
        let n = buf.len();
        let mut p = PacketBuf::new(&mut buf, 0, n);
        if framing.unframe(&mut p).is_ok() {
            assert!(p.len() <= n);
        }
    }
    let ekm = [0x5a; 256];
    let cipher = Cipher::ALL[data.first().map_or(0, |b| usize::from(b % 3))];
    let client = DataChannelKey::new(
        &DataKeys::from_ekm(&ekm, false),
        cipher,
        data.get(1).map_or(0, |b| b & 7),
        7,
        Limits::default(),
        now,
    )
    .with_framing(framing);
    let server = DataChannelKey::new(
        &DataKeys::from_ekm(&ekm, true),
        cipher,
        client.key_id,
        7,
        Limits::default(),
        now,
    )
    .with_framing(framing);
    // Arbitrary bytes are not a valid record.
    let mut buf = data.to_vec();
    let n = buf.len();
    assert!(server.open(now, &mut PacketBuf::new(&mut buf, 0, n)).is_err());
    // The same bytes as a payload: sealed, opened once, refused as a replay.
    // (2 bytes of headroom and 1 of tailroom: the most a framing adds)
    let at = OVERHEAD + 2;
    let mut buf = vec![0u8; at + data.len() + 1];
    buf[at..at + data.len()].copy_from_slice(data);
    let mut p = PacketBuf::new(&mut buf, at, at + data.len());
    client.seal(now, &mut p).unwrap();
    let wire = p.as_slice().to_vec();
    let mut a = wire.clone();
    let mut p = PacketBuf::new(&mut a, 0, wire.len());
    match server.open(now, &mut p) {
        Ok(Opened::Packet(_)) => assert_eq!(p.as_slice(), data),
        Ok(Opened::Ping(_)) => assert_eq!(data, polytun_openvpn::data::PING_MAGIC),
        // Unframed bytes that only a framing starts with (never an IP packet)
        Ok(Opened::Compressed(..)) => panic!("an uncompressed payload opened as compressed"),
        Err(DataError::Framing(FramingError::BadHeader(b)))
            if framing == Framing::None && Framing::guess(b).is_some() => {}
        Err(e) => panic!("sealed record refused: {e}"),
    }
    let mut b = wire.clone();
    assert!(server
        .open(now, &mut PacketBuf::new(&mut b, 0, wire.len()))
        .is_err());
});
