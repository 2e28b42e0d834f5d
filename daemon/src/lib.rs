//! polytun daemon: configuration, control socket, supervisor, data path.
//! The only place where tasks, sockets, configs and protocols meet.

pub mod config;
pub mod control;
pub mod datapath;
pub mod ipsec;
pub mod logging;
pub mod notes;
pub mod openvpn;
pub mod service;
pub mod threads;
pub use polytun_wireguard::uapi;
pub mod wg;
pub mod wgcompat;
