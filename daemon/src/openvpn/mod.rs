//! OpenVPN in the daemon (client role): settings from TOML or a .ovpn file
//! ([`settings`]), the control task ([`tunnel`]), the data path
//! ([`datapath`]) and what they share ([`state`]).

pub mod datapath;
pub mod settings;
pub mod state;
pub mod tunnel;
