//! WireGuard in the daemon: the tunnel control task ([`tunnel`]), the data
//! path's turns ([`datapath`], run by [`crate::threads`]), and what they
//! share ([`state`], [`activity`]).

pub mod activity;
pub mod datapath;
pub mod state;
pub mod tunnel;
