//! P_DATA_V2 (the data-packet parser and opening): arbitrary bytes never
//! panic and never open under a key; the header parses consistently; a
//! sealed payload opens to itself once and not twice.
#![no_main]
use libfuzzer_sys::fuzz_target;
use polytun_core::{Limits, PacketBuf};
use polytun_openvpn::data::{Cipher, DataChannelKey, DataKeys, Opened, OVERHEAD};
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
    let ekm = [0x5a; 256];
    let cipher = Cipher::ALL[data.first().map_or(0, |b| usize::from(b % 3))];
    let client = DataChannelKey::new(
        &DataKeys::from_ekm(&ekm, false),
        cipher,
        data.get(1).map_or(0, |b| b & 7),
        7,
        Limits::default(),
        now,
    );
    let server = DataChannelKey::new(
        &DataKeys::from_ekm(&ekm, true),
        cipher,
        client.key_id,
        7,
        Limits::default(),
        now,
    );
    // Arbitrary bytes are not a valid record.
    let mut buf = data.to_vec();
    let n = buf.len();
    assert!(server.open(now, &mut PacketBuf::new(&mut buf, 0, n)).is_err());
    // The same bytes as a payload: sealed, opened once, refused as a replay.
    let mut buf = vec![0u8; OVERHEAD + data.len() + 32];
    buf[OVERHEAD..OVERHEAD + data.len()].copy_from_slice(data);
    let mut p = PacketBuf::new(&mut buf, OVERHEAD, OVERHEAD + data.len());
    client.seal(now, &mut p).unwrap();
    let wire = p.as_slice().to_vec();
    let mut a = wire.clone();
    let mut p = PacketBuf::new(&mut a, 0, wire.len());
    match server.open(now, &mut p) {
        Ok(Opened::Packet(_)) => assert_eq!(p.as_slice(), data),
        Ok(Opened::Ping(_)) => assert_eq!(data, polytun_openvpn::data::PING_MAGIC),
        Err(e) => panic!("sealed record refused: {e}"),
    }
    let mut b = wire.clone();
    assert!(server
        .open(now, &mut PacketBuf::new(&mut b, 0, wire.len()))
        .is_err());
});
