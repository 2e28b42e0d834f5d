//! WireGuard in the daemon: the tunnel control task ([`tunnel`]), the data
//! path's turns ([`datapath`]) and the threads that run them ([`threads`]),
//! and what they share ([`state`], [`activity`]).

pub mod activity;
pub mod datapath;
pub mod state;
pub mod threads;
pub mod tunnel;
