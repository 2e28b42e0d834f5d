//! polytun daemon: configuration, control socket, supervisor, data path.
//! The only place where tasks, sockets, configs and protocols meet.

pub mod config;
pub mod logging;
pub mod control;
pub mod service;
pub mod uapi;
pub mod wgcompat;
pub mod wg;
