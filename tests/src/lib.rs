//! End-to-end test harness for polytun: network namespaces, real peers, checksummed transfers.
//!
//! * [`Netns`] — a uniquely named network namespace, deleted on drop together with every process
//!   the harness started in it; [`veth_pair`] / [`Router`] build the underlay.
//! * [`Netns::spawn`] / [`Netns::run`] — processes inside a namespace, output logged to a per-test
//!   directory whose log tails are printed when the test fails.
//! * [`bins`] — where the polytun binaries and the real peers are (missing → the test fails with
//!   the command that fixes it).
//! * [`wg`] — WireGuard devices: wireguard-go, boringtun-cli, polytun-wg (all via the UAPI and
//!   `wg set`) and polytund (via its TOML config and `polytun show --json`).
//! * [`ping`], [`wait_ping`], [`xfer`], [`wait_until`] — traffic and polling helpers.
//! * [`scenario`] — the parametrised tests (pair matrix, roaming) shared by the test files.

pub mod alloc;
pub mod bins;
pub mod ipsec;
pub mod netns;
pub mod openvpn;
pub mod pcap;
pub mod scenario;
pub mod traffic;
pub mod wg;

pub use netns::{unique_ifname, veth_link, veth_pair, Netns, Out, Router, Veth};
pub use traffic::{
    ping, ping_df, snmp, wait_ping, wait_until, xfer, xfer_start, XferRun, XFER_BYTES,
};
pub use wg::{DevCfg, Device, Impl, Keypair, PeerCfg};
