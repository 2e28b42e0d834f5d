//! AEAD backends side by side, at the sizes the data path sees: core's
//! seam (ring since this comparison), the RustCrypto crates and aws-lc-rs.
//! `cargo bench -p polytun-core --bench aead`; the table lives in docs/aead.md.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use polytun_core::aead::{Aead, Algorithm};
use std::hint::black_box;

const SIZES: [usize; 4] = [64, 512, 1400, 16384];

enum RustCrypto {
    ChaCha(chacha20poly1305::ChaCha20Poly1305),
    Aes(Box<aes_gcm::Aes256Gcm>),
}

impl RustCrypto {
    fn new(alg: Algorithm, key: &[u8]) -> Self {
        use chacha20poly1305::KeyInit;
        match alg {
            Algorithm::ChaCha20Poly1305 => {
                RustCrypto::ChaCha(chacha20poly1305::ChaCha20Poly1305::new_from_slice(key).unwrap())
            }
            _ => RustCrypto::Aes(Box::new(aes_gcm::Aes256Gcm::new_from_slice(key).unwrap())),
        }
    }

    fn seal(&self, buf: &mut [u8]) -> Vec<u8> {
        use chacha20poly1305::AeadInPlace;
        let n = [1u8; 12];
        match self {
            RustCrypto::ChaCha(c) => c
                .encrypt_in_place_detached((&n).into(), &[], buf)
                .unwrap()
                .to_vec(),
            RustCrypto::Aes(c) => c
                .encrypt_in_place_detached((&n).into(), &[], buf)
                .unwrap()
                .to_vec(),
        }
    }
}

fn bench(c: &mut Criterion) {
    for (alg, ring_alg, lc_alg) in [
        (
            Algorithm::ChaCha20Poly1305,
            &ring::aead::CHACHA20_POLY1305,
            &aws_lc_rs::aead::CHACHA20_POLY1305,
        ),
        (
            Algorithm::Aes256Gcm,
            &ring::aead::AES_256_GCM,
            &aws_lc_rs::aead::AES_256_GCM,
        ),
    ] {
        let mut g = c.benchmark_group(format!("seal {}", alg.name()));
        let key = vec![7u8; alg.key_len()];
        let core = Aead::new(alg, &key).unwrap();
        let rustcrypto = RustCrypto::new(alg, &key);
        let ring_key =
            ring::aead::LessSafeKey::new(ring::aead::UnboundKey::new(ring_alg, &key).unwrap());
        let lc_key = aws_lc_rs::aead::LessSafeKey::new(
            aws_lc_rs::aead::UnboundKey::new(lc_alg, &key).unwrap(),
        );
        for size in SIZES {
            let mut buf = vec![0u8; size];
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new("core-seam", size), &size, |b, _| {
                b.iter(|| black_box(core.seal_in_place(&[1; 12], &[], &mut buf)))
            });
            g.bench_with_input(BenchmarkId::new("rustcrypto", size), &size, |b, _| {
                b.iter(|| black_box(rustcrypto.seal(&mut buf)))
            });
            g.bench_with_input(BenchmarkId::new("ring", size), &size, |b, _| {
                b.iter(|| {
                    black_box(ring_key.seal_in_place_separate_tag(
                        ring::aead::Nonce::assume_unique_for_key([1; 12]),
                        ring::aead::Aad::empty(),
                        &mut buf,
                    ))
                })
            });
            g.bench_with_input(BenchmarkId::new("aws-lc-rs", size), &size, |b, _| {
                b.iter(|| {
                    black_box(lc_key.seal_in_place_separate_tag(
                        aws_lc_rs::aead::Nonce::assume_unique_for_key([1; 12]),
                        aws_lc_rs::aead::Aad::empty(),
                        &mut buf,
                    ))
                })
            });
        }
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
