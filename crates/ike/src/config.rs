//! Configuration of an IKE endpoint: identities, PSK, proposals in order of
//! preference, traffic selectors, lifetimes, timers; and proposal selection
//! and traffic-selector narrowing (RFC 7296 §2.7, §2.9).

use crate::crypto::{DhGroup, EncrAlg, EspTransform, IkeAlgs, IntegAlg, PrfAlg, Secret};
use crate::wire::{proto, tt, Identity, Proposal, TrafficSelector, Transform};
use polytun_core::Limits;
use std::net::IpAddr;
use std::time::Duration;

/// One IKE SA proposal: every combination of its transforms is acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeProposal {
    pub encr: Vec<EncrAlg>,
    /// Empty for AEAD-only proposals.
    pub integ: Vec<IntegAlg>,
    pub prf: Vec<PrfAlg>,
    /// In order of preference; the first one is sent in the KE payload.
    pub dh: Vec<DhGroup>,
}

impl IkeProposal {
    /// strongSwan's default first proposal: aes256gcm16-prfsha256-x25519.
    pub fn aes256gcm_sha256_x25519() -> Self {
        IkeProposal {
            encr: vec![EncrAlg::AES256GCM16],
            integ: vec![],
            prf: vec![PrfAlg::HmacSha256],
            dh: vec![DhGroup::Curve25519],
        }
    }

    pub fn to_wire(&self, num: u8) -> Proposal {
        let mut transforms: Vec<Transform> = self.encr.iter().map(|e| e.transform()).collect();
        transforms.extend(self.prf.iter().map(|p| p.transform()));
        transforms.extend(self.integ.iter().map(|i| i.transform()));
        transforms.extend(self.dh.iter().map(|d| d.transform()));
        Proposal {
            num,
            protocol: proto::IKE,
            spi: vec![],
            transforms,
        }
    }
}

/// One ESP proposal for CHILD SAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspProposal {
    pub encr: Vec<EncrAlg>,
    pub integ: Vec<IntegAlg>,
    /// Extended sequence numbers: offered / accepted values, preferred first.
    pub esn: Vec<bool>,
    /// Key exchange groups for PFS in CREATE_CHILD_SA (not used in IKE_AUTH).
    pub dh: Vec<DhGroup>,
}

impl EspProposal {
    pub fn aes256gcm() -> Self {
        EspProposal {
            encr: vec![EncrAlg::AES256GCM16],
            integ: vec![],
            esn: vec![false],
            dh: vec![],
        }
    }

    /// `with_dh`: include the DH transforms (CREATE_CHILD_SA with PFS);
    /// never in IKE_AUTH (§1.2).
    pub fn to_wire(&self, num: u8, spi: u32, with_dh: bool) -> Proposal {
        let mut transforms: Vec<Transform> = self.encr.iter().map(|e| e.transform()).collect();
        transforms.extend(self.integ.iter().map(|i| i.transform()));
        if with_dh {
            transforms.extend(self.dh.iter().map(|d| d.transform()));
        }
        let esn = if self.esn.is_empty() {
            &[false][..]
        } else {
            &self.esn[..]
        };
        transforms.extend(esn.iter().map(|e| Transform {
            ttype: tt::ESN,
            id: *e as u16,
            key_len: None,
        }));
        Proposal {
            num,
            protocol: proto::ESP,
            spi: spi.to_be_bytes().to_vec(),
            transforms,
        }
    }
}

/// Retransmission timers (§2.4): `initial`, then × `factor` per retry,
/// giving up after `tries` retransmissions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retransmit {
    pub initial: Duration,
    pub factor: f64,
    pub tries: u32,
}

impl Default for Retransmit {
    fn default() -> Self {
        // strongSwan's defaults: 4 s × 1.8^n, 5 retransmissions (~165 s).
        Retransmit {
            initial: Duration::from_secs(4),
            factor: 1.8,
            tries: 5,
        }
    }
}

impl Retransmit {
    pub fn timeout(&self, attempt: u32) -> Duration {
        self.initial.mul_f64(self.factor.powi(attempt as i32))
    }
}

/// What one tunnel's IKE endpoint is configured with.
#[derive(Clone)]
pub struct Config {
    pub local_id: Identity,
    /// The peer's expected identity; `None`: any identity the validator accepts.
    pub remote_id: Option<Identity>,
    pub psk: Secret,
    /// Certificate authentication (RFC 7427 signatures) instead of the PSK,
    /// for both directions: we sign with its key, the peer must present a
    /// certificate chaining to its CAs.
    pub pubkey: Option<crate::auth::PubkeyAuth>,
    /// In order of preference (the responder picks by this order).
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    /// Our side's traffic selectors (TSi when initiating).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side (TSr when initiating).
    pub remote_ts: Vec<TrafficSelector>,
    /// The (local, remote) selectors of more CHILD SAs: a peer may create
    /// a CHILD SA for any one pair (`local_ts`/`remote_ts` or one of these),
    /// narrowed within that pair (§2.9).
    pub more_children: Vec<(Vec<TrafficSelector>, Vec<TrafficSelector>)>,
    pub child_lifetimes: Limits,
    pub retransmit: Retransmit,
    /// Demand COOKIEs once this many responder SAs are half-open (SAV).
    pub cookie_threshold: usize,
    /// Half-open responder SAs are dropped after this long.
    pub half_open_timeout: Duration,
    /// Use UDP encapsulation (port 4500) even when no NAT is detected.
    pub force_encap: bool,
    /// Send an empty INFORMATIONAL (liveness check) after this much silence.
    pub dpd_interval: Option<Duration>,
    /// Send INITIAL_CONTACT in IKE_AUTH (we hold no other SA with the peer).
    pub initial_contact: bool,
    /// Rekey every IKE SA this long after it was established (minus a
    /// random jitter, see `rekey_jitter`); `None`: never by time. CHILD SAs
    /// are rekeyed at `child_lifetimes.soft_time` (minus jitter) and deleted
    /// at `child_lifetimes.hard_time` if no rekey succeeded by then.
    pub ike_rekey_time: Option<Duration>,
    /// Hard lifetime of an IKE SA: it is closed this long after it was
    /// established if no rekey succeeded by then.
    pub ike_life_time: Option<Duration>,
    /// Up to this much (and at most half of the rekey time) is taken off
    /// each rekey time at random, so that two peers with the same
    /// lifetimes rarely rekey at the same instant (RFC 7296 §2.8.1).
    pub rekey_jitter: Duration,
    /// Jitter of CHILD SA rekeys (strongSwan's CHILD `rand_time`); `None`:
    /// `rekey_jitter`. Either is capped at half the rekey time.
    pub child_rekey_jitter: Option<Duration>,
    /// What to do when DPD (or any retransmission) finds the peer dead.
    pub dpd_action: crate::endpoint::DpdAction,
    /// Announce and use IKE fragmentation (RFC 7383).
    pub fragmentation: bool,
    /// Fragment encrypted messages that would make a larger IP datagram
    /// than this (strongSwan's `charon.fragment_size`, default 1280).
    pub fragment_size: usize,
    /// An established IKE SA whose request (a liveness check, a rekey, …)
    /// stays unanswered this long is declared dead, even if retransmissions
    /// remain; `None`: only when every retransmission went unanswered.
    pub dpd_timeout: Option<Duration>,
}

impl Config {
    pub fn psk(local_id: Identity, remote_id: Option<Identity>, psk: &[u8]) -> Config {
        Config {
            local_id,
            remote_id,
            psk: zeroize::Zeroizing::new(psk.to_vec()),
            pubkey: None,
            ike_proposals: vec![IkeProposal::aes256gcm_sha256_x25519()],
            esp_proposals: vec![EspProposal::aes256gcm()],
            local_ts: vec![any_v4()],
            remote_ts: vec![any_v4()],
            more_children: Vec::new(),
            child_lifetimes: Limits {
                soft_time: Some(Duration::from_secs(3240)),
                hard_time: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
            retransmit: Retransmit::default(),
            cookie_threshold: 64,
            half_open_timeout: Duration::from_secs(30),
            force_encap: false,
            dpd_interval: None,
            initial_contact: true,
            // strongSwan's defaults: 4 h, hard at 110 %
            ike_rekey_time: Some(Duration::from_secs(4 * 3600)),
            ike_life_time: Some(Duration::from_secs(4 * 3600 + 24 * 60)),
            rekey_jitter: Duration::from_secs(300),
            child_rekey_jitter: None,
            dpd_action: crate::endpoint::DpdAction::Clear,
            fragmentation: true,
            fragment_size: crate::fragment::DEFAULT_FRAGMENT_SIZE,
            dpd_timeout: None,
        }
    }
}

impl Config {
    /// Certificate authentication; `local_id` `None`: our certificate's
    /// subject DN (strongSwan's default).
    pub fn pubkey(
        local_id: Option<Identity>,
        remote_id: Option<Identity>,
        auth: crate::auth::PubkeyAuth,
    ) -> Config {
        // a DN naming our certificate's subject is sent as the subject's
        // exact DER, which the peer compares with the certificate
        let subject = auth.subject_identity();
        let local_id = match (local_id, &subject) {
            (Some(Identity::DerDn(d)), Identity::DerDn(s)) if crate::cert::dn_eq(&d, s) => {
                subject.clone()
            }
            (Some(id), _) => id,
            (None, _) => subject,
        };
        let mut c = Config::psk(local_id, remote_id, &[]);
        c.pubkey = Some(auth);
        c
    }

    /// A responder's narrowing of the initiator's TSi (our remote side) and
    /// TSr (our local side) to the first configured CHILD SA both fit:
    /// `Some((local, remote))`, or `None` (TS_UNACCEPTABLE).
    pub fn narrow(
        &self,
        tsi: &[TrafficSelector],
        tsr: &[TrafficSelector],
    ) -> Option<(Vec<TrafficSelector>, Vec<TrafficSelector>)> {
        std::iter::once((&self.local_ts, &self.remote_ts))
            .chain(self.more_children.iter().map(|(l, r)| (l, r)))
            .find_map(|(l, r)| {
                let n_remote = ts_narrow(tsi, r);
                let n_local = ts_narrow(tsr, l);
                (!n_remote.is_empty() && !n_local.is_empty()).then_some((n_local, n_remote))
            })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("local_id", &self.local_id)
            .field("remote_id", &self.remote_id)
            .field("psk", &"<redacted>")
            .field("pubkey", &self.pubkey)
            .field("ike_proposals", &self.ike_proposals)
            .field("esp_proposals", &self.esp_proposals)
            .field("local_ts", &self.local_ts)
            .field("remote_ts", &self.remote_ts)
            .finish_non_exhaustive()
    }
}

/// 0.0.0.0/0, any protocol and port.
pub fn any_v4() -> TrafficSelector {
    TrafficSelector {
        ip_proto: 0,
        start_port: 0,
        end_port: 65535,
        start: [0, 0, 0, 0].into(),
        end: [255, 255, 255, 255].into(),
    }
}

/// A traffic selector for a prefix (`addr/len`), any protocol and port.
pub fn ts_prefix(addr: IpAddr, len: u8) -> TrafficSelector {
    let (start, end) = match addr {
        IpAddr::V4(a) => {
            let a = u32::from(a);
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len.min(32))
            };
            (
                IpAddr::from((a & mask).to_be_bytes()),
                IpAddr::from((a | !mask).to_be_bytes()),
            )
        }
        IpAddr::V6(a) => {
            let a = u128::from(a);
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len.min(128))
            };
            (
                IpAddr::from((a & mask).to_be_bytes()),
                IpAddr::from((a | !mask).to_be_bytes()),
            )
        }
    };
    TrafficSelector {
        ip_proto: 0,
        start_port: 0,
        end_port: 65535,
        start,
        end,
    }
}

/// The intersection of two selectors, if not empty.
pub fn ts_intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    if a.start.is_ipv4() != b.start.is_ipv4() || a.end.is_ipv4() != a.start.is_ipv4() {
        return None;
    }
    let ip_proto = match (a.ip_proto, b.ip_proto) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    let start = a.start.max(b.start);
    let end = a.end.min(b.end);
    if start_port > end_port || start > end {
        return None;
    }
    Some(TrafficSelector {
        ip_proto,
        start_port,
        end_port,
        start,
        end,
    })
}

/// Narrows `proposed` to what `allowed` permits (§2.9): every non-empty
/// pairwise intersection, without duplicates.
pub fn ts_narrow(
    proposed: &[TrafficSelector],
    allowed: &[TrafficSelector],
) -> Vec<TrafficSelector> {
    let mut v = Vec::new();
    for p in proposed {
        for a in allowed {
            if let Some(i) = ts_intersect(p, a) {
                if !v.contains(&i) {
                    v.push(i);
                }
            }
        }
    }
    v
}

/// Is every selector of `got` inside one of `offered`?
pub fn ts_subset(got: &[TrafficSelector], offered: &[TrafficSelector]) -> bool {
    !got.is_empty()
        && got.iter().all(|g| {
            offered
                .iter()
                .any(|o| ts_intersect(g, o).as_ref() == Some(g))
        })
}

fn first_common<T: Copy + PartialEq>(ours: &[T], theirs: &[T]) -> Option<T> {
    ours.iter().copied().find(|o| theirs.contains(o))
}

/// The result of selecting an IKE proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeChoice {
    /// Proposal number of the peer's proposal we chose.
    pub num: u8,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub prf: PrfAlg,
    /// Acceptable groups, our preference first.
    pub dh: Vec<DhGroup>,
}

impl IkeChoice {
    pub fn algs(&self, dh: DhGroup) -> IkeAlgs {
        IkeAlgs {
            encr: self.encr,
            integ: self.integ,
            prf: self.prf,
            dh,
        }
    }

    /// The single-transform proposal of a response.
    pub fn to_wire(&self, dh: DhGroup) -> Proposal {
        let mut transforms = vec![self.encr.transform(), self.prf.transform()];
        if let Some(i) = self.integ {
            transforms.push(i.transform());
        }
        transforms.push(dh.transform());
        Proposal {
            num: self.num,
            protocol: proto::IKE,
            spi: vec![],
            transforms,
        }
    }
}

/// Selects an IKE proposal: our proposals in our order of preference, the
/// first of the peer's proposals that shares every transform type.
pub fn select_ike(ours: &[IkeProposal], theirs: &[Proposal]) -> Option<IkeChoice> {
    for o in ours {
        for t in theirs.iter().filter(|p| p.protocol == proto::IKE) {
            let t_encr: Vec<EncrAlg> = t
                .of_type(tt::ENCR)
                .filter_map(EncrAlg::from_transform)
                .collect();
            let t_prf: Vec<PrfAlg> = t
                .of_type(tt::PRF)
                .filter_map(|x| PrfAlg::from_id(x.id))
                .collect();
            let t_integ: Vec<IntegAlg> = t
                .of_type(tt::INTEG)
                .filter_map(|x| IntegAlg::from_id(x.id))
                .collect();
            let t_dh: Vec<DhGroup> = t
                .of_type(tt::DH)
                .filter_map(|x| DhGroup::from_id(x.id))
                .collect();
            let Some(encr) = first_common(&o.encr, &t_encr) else {
                continue;
            };
            let Some(prf) = first_common(&o.prf, &t_prf) else {
                continue;
            };
            let integ = if encr.is_aead() {
                None
            } else {
                match first_common(&o.integ, &t_integ) {
                    Some(i) => Some(i),
                    None => continue,
                }
            };
            let dh: Vec<DhGroup> = o.dh.iter().copied().filter(|d| t_dh.contains(d)).collect();
            if dh.is_empty() {
                continue;
            }
            return Some(IkeChoice {
                num: t.num,
                encr,
                integ,
                prf,
                dh,
            });
        }
    }
    None
}

/// The result of selecting an ESP proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspChoice {
    pub num: u8,
    /// The peer's SPI (where we send).
    pub peer_spi: u32,
    pub transform: EspTransform,
    /// Agreed PFS group, if both offered DH transforms.
    pub dh: Option<DhGroup>,
}

impl EspChoice {
    pub fn to_wire(&self, our_spi: u32) -> Proposal {
        let mut transforms = vec![self.transform.encr.transform()];
        if let Some(i) = self.transform.integ {
            transforms.push(i.transform());
        }
        if let Some(d) = self.dh {
            transforms.push(d.transform());
        }
        transforms.push(Transform {
            ttype: tt::ESN,
            id: self.transform.esn as u16,
            key_len: None,
        });
        Proposal {
            num: self.num,
            protocol: proto::ESP,
            spi: our_spi.to_be_bytes().to_vec(),
            transforms,
        }
    }
}

/// Selects an ESP proposal (our preference first).
pub fn select_esp(ours: &[EspProposal], theirs: &[Proposal]) -> Option<EspChoice> {
    for o in ours {
        for t in theirs
            .iter()
            .filter(|p| p.protocol == proto::ESP && p.spi.len() == 4)
        {
            let t_encr: Vec<EncrAlg> = t
                .of_type(tt::ENCR)
                .filter_map(EncrAlg::from_transform)
                .collect();
            let t_integ: Vec<IntegAlg> = t
                .of_type(tt::INTEG)
                .filter_map(|x| IntegAlg::from_id(x.id))
                .collect();
            let t_dh: Vec<DhGroup> = t
                .of_type(tt::DH)
                .filter_map(|x| DhGroup::from_id(x.id))
                .collect();
            let mut t_esn: Vec<bool> = t
                .of_type(tt::ESN)
                .filter(|x| x.id <= 1)
                .map(|x| x.id == 1)
                .collect();
            if t.of_type(tt::ESN).next().is_none() {
                t_esn.push(false);
            }
            let Some(encr) = first_common(&o.encr, &t_encr) else {
                continue;
            };
            let integ = if encr.is_aead() {
                None
            } else {
                match first_common(&o.integ, &t_integ) {
                    Some(i) => Some(i),
                    None => continue,
                }
            };
            let o_esn = if o.esn.is_empty() {
                vec![false]
            } else {
                o.esn.clone()
            };
            let Some(esn) = first_common(&o_esn, &t_esn) else {
                continue;
            };
            let dh = first_common(&o.dh, &t_dh);
            if !t_dh.is_empty() && dh.is_none() && !o.dh.is_empty() {
                continue;
            }
            let peer_spi = u32::from_be_bytes([t.spi[0], t.spi[1], t.spi[2], t.spi[3]]);
            return Some(EspChoice {
                num: t.num,
                peer_spi,
                transform: EspTransform { encr, integ, esn },
                dh,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrowing() {
        let wide = ts_prefix("10.0.0.0".parse().unwrap(), 8);
        let narrow = ts_prefix("10.1.2.0".parse().unwrap(), 24);
        let other = ts_prefix("192.168.0.0".parse().unwrap(), 16);
        assert_eq!(ts_narrow(&[wide], &[narrow]), vec![narrow]);
        assert_eq!(ts_narrow(&[narrow], &[wide]), vec![narrow]);
        assert!(ts_narrow(&[other], &[wide]).is_empty());
        assert!(ts_subset(&[narrow], &[wide]));
        assert!(!ts_subset(&[wide], &[narrow]));
        let v6 = ts_prefix("2001:db8::".parse().unwrap(), 32);
        assert!(ts_intersect(&v6, &wide).is_none());
        let mut udp53 = narrow;
        udp53.ip_proto = 17;
        udp53.start_port = 53;
        udp53.end_port = 53;
        assert_eq!(ts_intersect(&udp53, &wide), Some(udp53));
    }

    #[test]
    fn selection_by_our_preference() {
        let ours = vec![
            IkeProposal {
                encr: vec![EncrAlg::ChaCha20Poly1305],
                integ: vec![],
                prf: vec![PrfAlg::HmacSha512],
                dh: vec![DhGroup::Ecp384],
            },
            IkeProposal::aes256gcm_sha256_x25519(),
        ];
        let theirs = vec![
            IkeProposal::aes256gcm_sha256_x25519().to_wire(1),
            ours[0].to_wire(2),
        ];
        let c = select_ike(&ours, &theirs).unwrap();
        assert_eq!(c.num, 2);
        assert_eq!(c.encr, EncrAlg::ChaCha20Poly1305);
        let none = select_ike(&ours[..1], &theirs[..1]);
        assert!(none.is_none());
    }
}
