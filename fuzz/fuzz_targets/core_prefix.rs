//! Longest-prefix match against a linear model.
#![no_main]
use ipnet::{IpNet, Ipv4Net};
use libfuzzer_sys::fuzz_target;
use polytun_core::PrefixTable;
use std::net::{IpAddr, Ipv4Addr};

fuzz_target!(|data: &[u8]| {
    let mut t = PrefixTable::new();
    let mut model: Vec<(Ipv4Net, usize)> = Vec::new();
    for (i, c) in data.chunks_exact(5).enumerate() {
        let addr = Ipv4Addr::new(c[0], c[1], c[2], c[3]);
        let len = c[4] % 33;
        let Ok(net) = Ipv4Net::new(addr, len) else {
            continue;
        };
        let net = net.trunc();
        if i % 3 == 2 {
            let _ = t.lookup(IpAddr::V4(addr));
            let want = model
                .iter()
                .filter(|(n, _)| n.contains(&addr))
                .max_by_key(|(n, _)| n.prefix_len())
                .map(|(_, v)| *v);
            assert_eq!(t.lookup(IpAddr::V4(addr)).copied(), want);
        } else {
            t.insert(IpNet::V4(net), i);
            model.retain(|(n, _)| *n != net);
            model.push((net, i));
        }
    }
});
