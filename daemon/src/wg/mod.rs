//! WireGuard in the daemon: the tunnel control task ([`tunnel`]), the data
//! path ([`datapath`]) and what they share ([`state`]).

pub mod activity;
pub mod datapath;
pub mod state;
pub mod threads;
pub mod tunnel;
