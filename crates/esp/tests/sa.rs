//! EspSa behaviour: round trips, tampering, replay, ESN, padding, dummy
//! packets, lifetimes, counter exhaustion.
mod common;

use aes::cipher::{BlockEncrypt, KeyInit};
use common::{hex, ipv4, ipv6, open, seal};
use hmac::{Hmac, Mac};
use polytun_core::replay::ReplayError;
use polytun_core::{Aead, Algorithm, KeyStatus, Limits, OpenError, PacketBuf, SealError};
use polytun_esp::{
    Direction, EspOpenError, EspSa, EspSealError, NextHeader, SaError, SaParams, Transform,
};
use proptest::prelude::*;
use sha2::Sha256;
use std::time::{Duration, Instant};

const SPI: u32 = 0xc0ff_ee01;

fn keymat(t: Transform) -> Vec<u8> {
    (0..t.keymat_len())
        .map(|i| (i as u8).wrapping_mul(37) ^ 0x5c)
        .collect()
}

fn pair_with(t: Transform, f: impl Fn(&mut SaParams)) -> (EspSa, EspSa, Instant) {
    let now = Instant::now();
    let mut out = SaParams::new(SPI, Direction::Outbound, t);
    let mut inb = SaParams::new(SPI, Direction::Inbound, t);
    f(&mut out);
    f(&mut inb);
    let k = keymat(t);
    (
        EspSa::new(out, &k, now).unwrap(),
        EspSa::new(inb, &k, now).unwrap(),
        now,
    )
}

fn pair(t: Transform, esn: bool) -> (EspSa, EspSa, Instant) {
    pair_with(t, |p| p.esn = esn)
}

fn sizes() -> impl Iterator<Item = usize> {
    (0..=1500).filter(|s| *s < 80 || s % 13 == 0 || *s > 1480)
}

#[test]
fn round_trips_every_transform_v4_v6_esn_on_off() {
    for t in Transform::ALL {
        for esn in [false, true] {
            let (out, inb, now) = pair(t, esn);
            let mut expect_seq = 1;
            for size in sizes() {
                for inner in [
                    (size >= 20).then(|| ipv4(size, size as u8)),
                    (size >= 40).then(|| ipv6(size, !size as u8)),
                ]
                .into_iter()
                .flatten()
                {
                    let (pkt, st) = seal(&out, now, &inner).unwrap();
                    assert_eq!(st, KeyStatus::Fresh);
                    assert_eq!(pkt.len(), inner.len() + t.overhead(inner.len()), "{t:?}");
                    assert_eq!(
                        (pkt.len() - t.header_len() - 16) % t.block_len(),
                        0,
                        "{t:?} alignment"
                    );
                    assert_eq!(&pkt[..4], &SPI.to_be_bytes());
                    assert_eq!(&pkt[4..8], &(expect_seq as u32).to_be_bytes());
                    // The payload is not in the clear.
                    assert!(!pkt.windows(16).any(|w| w == &inner[4..20]));
                    let (got, o) = open(&inb, now, &pkt).unwrap();
                    assert_eq!(got, inner, "{t:?} esn={esn} size={size}");
                    assert_eq!(o.seq, expect_seq);
                    let want = if inner[0] >> 4 == 4 {
                        NextHeader::Ipv4
                    } else {
                        NextHeader::Ipv6
                    };
                    assert_eq!(o.next_header, want);
                    assert!(!o.is_dummy());
                    expect_seq += 1;
                }
            }
        }
    }
}

#[test]
fn non_ip_payload_is_refused_and_dummy_packets_are_distinct() {
    for t in Transform::ALL {
        let (out, inb, now) = pair(t, false);
        assert_eq!(seal(&out, now, b"").unwrap_err(), EspSealError::NotIp);
        assert_eq!(
            seal(&out, now, b"\x10abc").unwrap_err(),
            EspSealError::NotIp
        );
        for len in [0usize, 1, 40, 333] {
            let mut buf = vec![0x45u8; 64 + len + 64];
            let mut p = PacketBuf::new(&mut buf, 64, 64 + len);
            out.seal_dummy(now, &mut p).unwrap();
            let pkt = p.as_slice().to_vec();
            let (got, o) = open(&inb, now, &pkt).unwrap();
            assert!(o.is_dummy(), "{t:?}");
            assert_eq!(o.next_header, NextHeader::Dummy);
            assert!(got.is_empty());
        }
    }
}

#[test]
fn tampering_anywhere_is_rejected_and_does_not_move_the_window() {
    for t in Transform::ALL {
        for esn in [false, true] {
            let (out, inb, now) = pair(t, esn);
            let (pkt, _) = seal(&out, now, &ipv4(100, 7)).unwrap();
            for i in 0..pkt.len() {
                let mut bad = pkt.clone();
                bad[i] ^= 0x20;
                let e = open(&inb, now, &bad).unwrap_err();
                match i {
                    0..=3 => assert!(
                        matches!(e, EspOpenError::WrongSpi(_)),
                        "{t:?} byte {i}: {e:?}"
                    ),
                    _ => assert_eq!(e, EspOpenError::Open(OpenError::Auth), "{t:?} byte {i}"),
                }
            }
            // Truncated packets.
            for n in 0..pkt.len() {
                assert!(
                    open(&inb, now, &pkt[..n]).is_err(),
                    "{t:?} truncated to {n}"
                );
            }
            assert_eq!(inb.newest_seq(), None, "forgeries moved the window");
            assert!(open(&inb, now, &pkt).is_ok());
        }
    }
}

#[test]
fn wrong_key_or_wrong_esn_setting_fails() {
    for t in Transform::ALL {
        let (out, _, now) = pair(t, true);
        let mut other = keymat(t);
        other[0] ^= 1;
        let inb = EspSa::new(SaParams::new(SPI, Direction::Inbound, t), &other, now).unwrap();
        let (pkt, _) = seal(&out, now, &ipv4(60, 1)).unwrap();
        assert_eq!(
            open(&inb, now, &pkt).unwrap_err(),
            EspOpenError::Open(OpenError::Auth)
        );
        // Salt / integrity key (the last KEYMAT byte) matters too.
        let mut other = keymat(t);
        *other.last_mut().unwrap() ^= 1;
        let inb = EspSa::new(SaParams::new(SPI, Direction::Inbound, t), &other, now).unwrap();
        assert_eq!(
            open(&inb, now, &pkt).unwrap_err(),
            EspOpenError::Open(OpenError::Auth)
        );
        // ESN changes the ICV input even when seq_hi is 0 (AEAD: AAD layout).
        if t.is_aead() {
            let (_, inb_noesn, _) = pair(t, false);
            assert_eq!(
                open(&inb_noesn, now, &pkt).unwrap_err(),
                EspOpenError::Open(OpenError::Auth)
            );
        }
        // Directions are enforced.
        assert_eq!(
            open(&out, now, &pkt).unwrap_err(),
            EspOpenError::WrongDirection
        );
    }
}

#[test]
fn replay_and_out_of_window_are_rejected() {
    for t in Transform::ALL {
        let (out, inb, now) = pair_with(t, |p| p.window = 64);
        let pkts: Vec<_> = (0..200)
            .map(|i| seal(&out, now, &ipv4(40, i as u8)).unwrap().0)
            .collect();
        open(&inb, now, &pkts[10]).unwrap();
        assert_eq!(
            open(&inb, now, &pkts[10]).unwrap_err(),
            EspOpenError::Open(OpenError::Replay(ReplayError::Duplicate(11)))
        );
        open(&inb, now, &pkts[199]).unwrap();
        assert_eq!(inb.newest_seq(), Some(200));
        // 200 - 64 = 136 is the oldest still inside; 136 is seq of pkts[135].
        assert!(matches!(
            open(&inb, now, &pkts[135]).unwrap_err(),
            EspOpenError::Open(OpenError::Replay(ReplayError::TooOld { .. }))
        ));
        open(&inb, now, &pkts[140]).unwrap();
        // Reordering inside the window is fine, once.
        open(&inb, now, &pkts[198]).unwrap();
        assert!(open(&inb, now, &pkts[198]).is_err());
    }
}

#[test]
fn default_window_is_at_least_1024() {
    let (out, inb, now) = pair(Transform::AesGcm256, false);
    let pkts: Vec<_> = (0..1100)
        .map(|_| seal(&out, now, &ipv4(20, 0)).unwrap().0)
        .collect();
    open(&inb, now, &pkts[1099]).unwrap();
    open(&inb, now, &pkts[1099 - 1023]).unwrap();
    open(&inb, now, &pkts[0]).unwrap();
}

#[test]
fn esn_rollover_across_2_pow_32() {
    for t in Transform::ALL {
        let start = (1u64 << 32) - 3;
        let (out, inb, now) = pair_with(t, |p| {
            p.esn = true;
            p.first_seq = start;
        });
        let pkts: Vec<_> = (0..8)
            .map(|i| seal(&out, now, &ipv6(48, i)).unwrap().0)
            .collect();
        assert_eq!(out.next_seq(), Some(start + 8));
        // seq_lo on the wire wraps; the high half is never sent.
        let lo: Vec<u32> = pkts
            .iter()
            .map(|p| u32::from_be_bytes(p[4..8].try_into().unwrap()))
            .collect();
        assert_eq!(lo, [u32::MAX - 2, u32::MAX - 1, u32::MAX, 0, 1, 2, 3, 4]);
        // In order up to just before the wrap, then one after, then a late
        // one from before the wrap (Appendix A case B), then the rest.
        for i in [0, 1, 4, 2, 3, 5, 7, 6] {
            let (got, o) = open(&inb, now, &pkts[i]).unwrap();
            assert_eq!(o.seq, start + i as u64, "{t:?} packet {i}");
            assert_eq!(got, ipv6(48, i as u8));
        }
        assert_eq!(inb.newest_seq(), Some((1 << 32) + 4));
        // Replays across the wrap are still caught.
        assert!(open(&inb, now, &pkts[3]).is_err());
        assert!(open(&inb, now, &pkts[0]).is_err());
        // A receiver without ESN cannot open post-wrap packets.
        let (_, inb32, _) = pair_with(t, |p| p.esn = false);
        assert!(open(&inb32, now, &pkts[4]).is_err());
    }
}

#[test]
fn counter_exhaustion_without_esn_never_wraps() {
    for t in Transform::ALL {
        let (out, inb, now) = pair_with(t, |p| p.first_seq = u64::from(u32::MAX) - 1);
        let a = seal(&out, now, &ipv4(20, 1)).unwrap().0;
        let b = seal(&out, now, &ipv4(20, 2)).unwrap().0;
        assert_eq!(&b[4..8], &[0xff; 4]);
        assert_eq!(
            seal(&out, now, &ipv4(20, 3)).unwrap_err(),
            EspSealError::Seal(SealError::CounterExhausted)
        );
        // The SA is retired for good.
        assert!(matches!(
            seal(&out, now, &ipv4(20, 3)).unwrap_err(),
            EspSealError::Seal(SealError::Expired(_))
        ));
        assert_eq!(open(&inb, now, &a).unwrap().1.seq, u64::from(u32::MAX) - 1);
        assert_eq!(open(&inb, now, &b).unwrap().1.seq, u64::from(u32::MAX));
    }
}

#[test]
fn lifetimes_soft_once_then_hard() {
    for t in Transform::ALL {
        let limits = Limits {
            soft_packets: Some(3),
            hard_packets: Some(5),
            soft_time: Some(Duration::from_secs(100)),
            hard_time: Some(Duration::from_secs(200)),
            ..Default::default()
        };
        let (out, inb, now) = pair_with(t, |p| p.limits = limits);
        let mut pkts = vec![];
        let mut statuses = vec![];
        for i in 0..6 {
            match seal(&out, now, &ipv4(30, i)) {
                Ok((p, s)) => {
                    pkts.push(p);
                    statuses.push(Ok(s));
                }
                Err(e) => statuses.push(Err(e)),
            }
        }
        use KeyStatus::*;
        assert_eq!(
            &statuses[..5],
            &[Ok(Fresh), Ok(Fresh), Ok(Expiring), Ok(Fresh), Ok(Fresh)]
        );
        assert!(matches!(
            statuses[5],
            Err(EspSealError::Seal(SealError::Expired(_)))
        ));
        let opened: Vec<_> = pkts
            .iter()
            .map(|p| open(&inb, now, p).unwrap().1.status)
            .collect();
        assert_eq!(opened, [Fresh, Fresh, Expiring, Fresh, Fresh]);
        assert_eq!(inb.lifetime().packets(), 5);

        // Time: soft at 100 s (reported once), hard at 200 s both ways.
        let (out, inb, now) = pair_with(t, |p| p.limits = limits);
        let (p1, s1) = seal(&out, now + Duration::from_secs(100), &ipv4(30, 0)).unwrap();
        assert_eq!(s1, Expiring);
        assert_eq!(
            open(&inb, now + Duration::from_secs(150), &p1)
                .unwrap()
                .1
                .status,
            Expiring
        );
        let (p2, s2) = seal(&out, now + Duration::from_secs(199), &ipv4(30, 0)).unwrap();
        assert_eq!(s2, Fresh);
        assert!(matches!(
            seal(&out, now + Duration::from_secs(200), &ipv4(30, 0)),
            Err(EspSealError::Seal(SealError::Expired(_)))
        ));
        assert!(matches!(
            open(&inb, now + Duration::from_secs(200), &p2),
            Err(EspOpenError::Open(OpenError::Expired(_)))
        ));

        // Bytes (inner packet bytes).
        let (out, _, now) = pair_with(t, |p| {
            p.limits = Limits {
                soft_bytes: Some(100),
                hard_bytes: Some(150),
                ..Default::default()
            }
        });
        assert_eq!(seal(&out, now, &ipv4(60, 0)).unwrap().1, Fresh);
        assert_eq!(seal(&out, now, &ipv4(60, 0)).unwrap().1, Expiring);
        assert_eq!(seal(&out, now, &ipv4(60, 0)).unwrap().1, Fresh);
        assert!(seal(&out, now, &ipv4(60, 0)).is_err());

        // Retire: deleted SAs refuse both ways.
        let (out, inb, now) = pair(t, false);
        let (p, _) = seal(&out, now, &ipv4(20, 0)).unwrap();
        inb.retire();
        assert!(open(&inb, now, &p).is_err());
        out.retire();
        assert!(seal(&out, now, &ipv4(20, 0)).is_err());
    }
}

#[test]
fn construction_checks_keymat_and_spi() {
    let now = Instant::now();
    for t in Transform::ALL {
        let k = keymat(t);
        assert!(matches!(
            EspSa::new(SaParams::new(SPI, Direction::Inbound, t), &k[1..], now),
            Err(SaError::KeymatLength { .. })
        ));
        assert_eq!(
            EspSa::new(SaParams::new(255, Direction::Inbound, t), &k, now).unwrap_err(),
            SaError::ReservedSpi(255)
        );
    }
    assert_eq!(Transform::AesGcm128.keymat_len(), 20);
    assert_eq!(Transform::AesGcm256.keymat_len(), 36);
    assert_eq!(Transform::ChaCha20Poly1305.keymat_len(), 36);
    assert_eq!(Transform::AesCbc128HmacSha256.keymat_len(), 48);
    assert_eq!(Transform::AesCbc256HmacSha256.keymat_len(), 64);
}

/// Builds an authentic packet around an arbitrary plaintext (trailer
/// included) the way a peer would, so that the trailer checks can be hit
/// behind a valid ICV.
fn craft(t: Transform, seq: u32, plaintext: &[u8]) -> Vec<u8> {
    let k = keymat(t);
    let (enc, rest) = k.split_at(t.enc_key_len());
    let mut hdr = SPI.to_be_bytes().to_vec();
    hdr.extend_from_slice(&seq.to_be_bytes());
    if t.is_aead() {
        let alg = match t {
            Transform::AesGcm128 => Algorithm::Aes128Gcm,
            Transform::AesGcm256 => Algorithm::Aes256Gcm,
            _ => Algorithm::ChaCha20Poly1305,
        };
        let iv = [0x42u8; 8];
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(rest);
        nonce[4..].copy_from_slice(&iv);
        let mut body = plaintext.to_vec();
        let tag = Aead::new(alg, enc)
            .unwrap()
            .seal_in_place(&nonce, &hdr, &mut body);
        hdr.extend_from_slice(&iv);
        hdr.extend_from_slice(&body);
        hdr.extend_from_slice(&tag);
        hdr
    } else {
        assert_eq!(plaintext.len() % 16, 0);
        let iv = [0x17u8; 16];
        let mut prev = iv;
        let mut body = plaintext.to_vec();
        for chunk in body.chunks_exact_mut(16) {
            for (c, p) in chunk.iter_mut().zip(prev) {
                *c ^= p;
            }
            let b = aes::Block::from_mut_slice(chunk);
            match enc.len() {
                16 => aes::Aes128::new_from_slice(enc).unwrap().encrypt_block(b),
                _ => aes::Aes256::new_from_slice(enc).unwrap().encrypt_block(b),
            }
            prev.copy_from_slice(chunk);
        }
        hdr.extend_from_slice(&iv);
        hdr.extend_from_slice(&body);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(rest).unwrap();
        mac.update(&hdr);
        let icv = mac.finalize().into_bytes();
        hdr.extend_from_slice(&icv[..16]);
        hdr
    }
}

#[test]
fn padding_and_next_header_are_checked_behind_a_valid_icv() {
    for t in Transform::ALL {
        let (_, inb, now) = pair(t, false);
        let block = t.block_len();
        // payload | trailer, aligned to the block.
        let build = |payload: &[u8], pad: Vec<u8>, pad_len: u8, nh: u8| {
            let mut pt = payload.to_vec();
            pt.extend_from_slice(&pad);
            pt.push(pad_len);
            pt.push(nh);
            assert_eq!(pt.len() % block, 0, "test bug");
            pt
        };
        let payload = ipv4(20, 9);
        let padn = (20 + 2usize).next_multiple_of(block) - 22;
        let good_pad: Vec<u8> = (1..=padn as u8).collect();
        // Our crafting is right: the good one opens.
        let ok = craft(t, 1, &build(&payload, good_pad.clone(), padn as u8, 4));
        assert_eq!(open(&inb, now, &ok).unwrap().0, payload, "{t:?}");
        let trailer_err = EspOpenError::Open(OpenError::Trailer);
        let mut seq = 2;
        let mut expect_trailer_err = |pt: Vec<u8>, why: &str| {
            let pkt = craft(t, seq, &pt);
            seq += 1;
            assert_eq!(
                open(&inb, now, &pkt).unwrap_err(),
                trailer_err,
                "{t:?}: {why}"
            );
        };
        if padn >= 2 {
            let mut bad = good_pad.clone();
            bad[1] = 7;
            expect_trailer_err(build(&payload, bad, padn as u8, 4), "padding not 1,2,3");
            expect_trailer_err(
                build(&payload, vec![0; padn], padn as u8, 4),
                "zero padding",
            );
        }
        expect_trailer_err(
            build(&payload, good_pad.clone(), padn as u8, 17),
            "next header 17",
        );
        expect_trailer_err(
            build(&payload, good_pad.clone(), padn as u8, 41),
            "IPv4 as next header 41",
        );
        expect_trailer_err(
            build(&payload, good_pad.clone(), 200, 4),
            "pad length beyond the packet",
        );
        // An RFC-legal longer padding (a whole extra block) is accepted.
        let long: Vec<u8> = (1..=(padn + block) as u8).collect();
        let pkt = craft(t, 50, &build(&payload, long, (padn + block) as u8, 4));
        assert_eq!(
            open(&inb, now, &pkt).unwrap().0,
            payload,
            "{t:?} long padding"
        );
        // An authenticated packet with a bad trailer still counts as seen.
        assert_eq!(inb.newest_seq(), Some(50));
        // A peer's dummy packet with random content.
        let mut dummy = vec![0xa5u8; block * 3 - 2];
        dummy.extend_from_slice(&[0, 59]);
        let (got, o) = open(&inb, now, &craft(t, 60, &dummy)).unwrap();
        assert!(o.is_dummy() && got.is_empty());
        // Sequence number 0 is never valid.
        let zero = craft(t, 0, &build(&payload, good_pad.clone(), padn as u8, 4));
        assert_eq!(
            open(&inb, now, &zero).unwrap_err(),
            EspOpenError::ZeroSequence
        );
    }
}

#[test]
fn seal_without_room_is_an_error() {
    for t in Transform::ALL {
        let (out, _, now) = pair(t, false);
        let p = ipv4(20, 0);
        let mut buf = vec![0u8; 200];
        buf[4..24].copy_from_slice(&p);
        let mut pb = PacketBuf::new(&mut buf, 4, 24);
        assert_eq!(
            out.seal(now, &mut pb),
            Err(EspSealError::Seal(SealError::NoRoom))
        );
        let mut buf = vec![0u8; 64 + 20 + 8];
        buf[64..84].copy_from_slice(&p);
        let mut pb = PacketBuf::new(&mut buf, 64, 84);
        assert_eq!(
            out.seal(now, &mut pb),
            Err(EspSealError::Seal(SealError::NoRoom))
        );
    }
}

#[test]
fn aead_iv_is_the_sequence_number() {
    let (out, _, now) = pair_with(Transform::AesGcm256, |p| {
        p.esn = true;
        p.first_seq = 0x0000_0007_0000_0009;
    });
    let (pkt, _) = seal(&out, now, &ipv4(20, 0)).unwrap();
    assert_eq!(&pkt[4..16], &hex("00000009 0000000700000009")[..]);
}

proptest! {
    #[test]
    fn open_never_panics_and_nothing_forged_authenticates(
        mut bytes in proptest::collection::vec(any::<u8>(), 0..300),
        steer in any::<bool>(),
        ti in 0usize..5,
        esn in any::<bool>(),
    ) {
        let t = Transform::ALL[ti];
        let (_, inb, now) = pair(t, esn);
        if steer && bytes.len() >= 4 {
            bytes[..4].copy_from_slice(&SPI.to_be_bytes());
        }
        let n = bytes.len();
        let mut p = PacketBuf::new(&mut bytes, 0, n);
        prop_assert!(inb.open(now, &mut p).is_err());
    }
}
