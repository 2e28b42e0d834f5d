//! Longest-prefix match over IPv4 and IPv6: WireGuard's allowed IPs
//! (cryptokey routing) today, IPsec traffic selectors and OpenVPN iroutes later.

use crate::fast_map::FastMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// One hash map per prefix length present, probed from the longest down.
/// Typical tables have a handful of distinct lengths, so a lookup is a few
/// hash probes with no pointer chasing.
#[derive(Clone, Debug)]
pub struct PrefixTable<T> {
    v4: Vec<(u8, FastMap<u32, T>)>,
    v6: Vec<(u8, FastMap<u128, T>)>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - u32::from(len)))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - u32::from(len)))
    }
}

fn bucket<K, T>(v: &mut Vec<(u8, FastMap<K, T>)>, len: u8) -> &mut FastMap<K, T> {
    let pos = match v.binary_search_by(|(l, _)| len.cmp(l)) {
        Ok(p) => p,
        Err(p) => {
            v.insert(p, (len, FastMap::default()));
            p
        }
    };
    &mut v[pos].1
}

impl<T> PrefixTable<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts (host bits are ignored) and returns the previous value.
    pub fn insert(&mut self, net: IpNet, value: T) -> Option<T> {
        let len = net.prefix_len();
        match net.addr() {
            IpAddr::V4(a) => bucket(&mut self.v4, len).insert(mask4(a.into(), len), value),
            IpAddr::V6(a) => bucket(&mut self.v6, len).insert(mask6(a.into(), len), value),
        }
    }

    pub fn remove(&mut self, net: &IpNet) -> Option<T> {
        let len = net.prefix_len();
        let r = match net.addr() {
            IpAddr::V4(a) => {
                let r = self
                    .v4
                    .iter_mut()
                    .find(|(l, _)| *l == len)
                    .and_then(|(_, m)| m.remove(&mask4(a.into(), len)));
                self.v4.retain(|(_, m)| !m.is_empty());
                r
            }
            IpAddr::V6(a) => {
                let r = self
                    .v6
                    .iter_mut()
                    .find(|(l, _)| *l == len)
                    .and_then(|(_, m)| m.remove(&mask6(a.into(), len)));
                self.v6.retain(|(_, m)| !m.is_empty());
                r
            }
        };
        r
    }

    /// The value of the longest prefix containing `addr`.
    pub fn lookup(&self, addr: IpAddr) -> Option<&T> {
        match addr {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4.iter().find_map(|(l, m)| m.get(&mask4(a, *l)))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6.iter().find_map(|(l, m)| m.get(&mask6(a, *l)))
            }
        }
    }

    /// Removes every entry whose value fails `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for (_, m) in &mut self.v4 {
            m.retain(|_, v| keep(v));
        }
        for (_, m) in &mut self.v6 {
            m.retain(|_, v| keep(v));
        }
        self.v4.retain(|(_, m)| !m.is_empty());
        self.v6.retain(|(_, m)| !m.is_empty());
    }

    /// All entries, as networks with host bits cleared.
    pub fn iter(&self) -> impl Iterator<Item = (IpNet, &T)> {
        let v4 = self.v4.iter().flat_map(|(l, m)| {
            m.iter().filter_map(move |(a, v)| {
                IpNet::new(IpAddr::V4((*a).into()), *l).ok().map(|n| (n, v))
            })
        });
        let v6 = self.v6.iter().flat_map(|(l, m)| {
            m.iter().filter_map(move |(a, v)| {
                IpNet::new(IpAddr::V6((*a).into()), *l).ok().map(|n| (n, v))
            })
        });
        v4.chain(v6)
    }

    pub fn len(&self) -> usize {
        self.v4.iter().map(|(_, m)| m.len()).sum::<usize>()
            + self.v6.iter().map(|(_, m)| m.len()).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> IpNet {
        s.parse().unwrap()
    }
    fn a(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn longest_wins() {
        let mut t = PrefixTable::new();
        t.insert(n("0.0.0.0/0"), 0);
        t.insert(n("10.0.0.0/8"), 8);
        t.insert(n("10.1.2.0/24"), 24);
        t.insert(n("10.1.2.3/32"), 32);
        t.insert(n("2001:db8::/32"), 632);
        t.insert(n("2001:db8:1::1/48"), 648);
        assert_eq!(t.lookup(a("10.1.2.3")), Some(&32));
        assert_eq!(t.lookup(a("10.1.2.4")), Some(&24));
        assert_eq!(t.lookup(a("10.9.9.9")), Some(&8));
        assert_eq!(t.lookup(a("192.0.2.1")), Some(&0));
        assert_eq!(t.lookup(a("2001:db8:1::77")), Some(&648));
        assert_eq!(t.lookup(a("2001:db8:2::77")), Some(&632));
        assert_eq!(t.lookup(a("::1")), None);
        assert_eq!(t.remove(&n("10.1.2.0/24")), Some(24));
        assert_eq!(t.lookup(a("10.1.2.4")), Some(&8));
        t.retain(|v| *v != 8);
        assert_eq!(t.lookup(a("10.1.2.4")), Some(&0));
        assert_eq!(t.len(), 4);
        assert!(t
            .iter()
            .any(|(net, v)| net == n("2001:db8:1::/48") && *v == 648));
    }

    proptest! {
        #[test]
        fn matches_linear_scan(nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..30), probes in proptest::collection::vec(any::<u32>(), 1..30)) {
            let mut t = PrefixTable::new();
            let mut model: Vec<(IpNet, usize)> = Vec::new();
            for (i, (addr, len)) in nets.iter().enumerate() {
                let net = IpNet::new(IpAddr::V4((*addr).into()), *len).unwrap().trunc();
                t.insert(net, i);
                model.retain(|(m, _)| *m != net);
                model.push((net, i));
            }
            for p in probes {
                let ip = IpAddr::V4(p.into());
                let want = model.iter().filter(|(m, _)| m.contains(&ip)).max_by_key(|(m, _)| m.prefix_len()).map(|(_, v)| v);
                prop_assert_eq!(t.lookup(ip), want);
            }
        }
    }
}
