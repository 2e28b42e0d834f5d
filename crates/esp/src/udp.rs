//! UDP encapsulation of ESP (RFC 3948) on port 4500, shared with IKE.
//!
//! | datagram | is |
//! | --- | --- |
//! | the single byte `0xFF` | a NAT keepalive (§2.3) |
//! | `00 00 00 00` ‖ IKE message | IKE, after the non-ESP marker (§2.2) |
//! | non-zero SPI ‖ … | ESP (§2.1) |

/// The NAT-keepalive datagram (RFC 3948 §2.3).
pub const NAT_KEEPALIVE: [u8; 1] = [0xff];
/// Prefix of IKE messages on port 4500 (RFC 3948 §2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];
/// The NAT-T port.
pub const NAT_T_PORT: u16 = 4500;
/// Size of an IKE header (RFC 7296 §3.1): the smallest IKE message.
pub const IKE_HEADER_LEN: usize = 28;
/// SPI + sequence number: the smallest thing that can be ESP.
const ESP_MIN_LEN: usize = 8;

/// What a datagram received on port 4500 is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Udp4500<'a> {
    /// An ESP packet (the whole datagram is the ESP packet).
    Esp { spi: u32 },
    /// An IKE message, without the non-ESP marker.
    Ike(&'a [u8]),
    /// A NAT keepalive: nothing to do.
    Keepalive,
    /// Anything else: count and drop.
    Malformed,
}

/// Classifies a datagram received on UDP port 4500.
pub fn classify_udp4500(datagram: &[u8]) -> Udp4500<'_> {
    if datagram == NAT_KEEPALIVE {
        return Udp4500::Keepalive;
    }
    let Some((head, rest)) = datagram.split_first_chunk::<4>() else {
        return Udp4500::Malformed;
    };
    let spi = u32::from_be_bytes(*head);
    if spi == 0 {
        return if rest.len() >= IKE_HEADER_LEN {
            Udp4500::Ike(rest)
        } else {
            Udp4500::Malformed
        };
    }
    // SPIs 1-255 are reserved (RFC 4303 §2.1); never assigned by IKE.
    if spi <= 255 || datagram.len() < ESP_MIN_LEN {
        return Udp4500::Malformed;
    }
    Udp4500::Esp { spi }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn classify_never_panics_and_is_consistent(d in proptest::collection::vec(any::<u8>(), 0..64), marker in any::<bool>()) {
            let mut d = d;
            if marker && d.len() >= 4 {
                d[..4].fill(0);
            }
            match classify_udp4500(&d) {
                Udp4500::Esp { spi } => {
                    prop_assert!(spi > 255 && d.len() >= 8);
                    prop_assert_eq!(crate::spi_of(&d), Some(spi));
                }
                Udp4500::Ike(m) => {
                    prop_assert_eq!(&d[..4], &NON_ESP_MARKER[..]);
                    prop_assert_eq!(m, &d[4..]);
                    prop_assert!(m.len() >= IKE_HEADER_LEN);
                }
                Udp4500::Keepalive => prop_assert_eq!(&d[..], &NAT_KEEPALIVE[..]),
                Udp4500::Malformed => {}
            }
        }
    }

    #[test]
    fn classifies() {
        assert_eq!(classify_udp4500(&[0xff]), Udp4500::Keepalive);
        assert_eq!(classify_udp4500(&[0xfe]), Udp4500::Malformed);
        assert_eq!(classify_udp4500(&[]), Udp4500::Malformed);
        assert_eq!(classify_udp4500(&[0xff, 0xff]), Udp4500::Malformed);
        let mut ike = vec![0u8; 4 + 28];
        ike[4] = 0x90;
        assert_eq!(classify_udp4500(&ike), Udp4500::Ike(&ike[4..]));
        assert_eq!(classify_udp4500(&ike[..31]), Udp4500::Malformed);
        let esp = [0x56, 0x1e, 0x22, 0x66, 0, 0, 0, 1, 9, 9];
        assert_eq!(classify_udp4500(&esp), Udp4500::Esp { spi: 0x561e_2266 });
        assert_eq!(classify_udp4500(&esp[..7]), Udp4500::Malformed);
        assert_eq!(
            classify_udp4500(&[0, 0, 0, 7, 0, 0, 0, 1]),
            Udp4500::Malformed
        );
    }
}
