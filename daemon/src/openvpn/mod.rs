//! OpenVPN in the daemon: settings from TOML or a .ovpn/.conf file
//! ([`settings`]), the client's control task ([`tunnel`]), the server
//! ([`server`]), the data path ([`datapath`]) and what they share
//! ([`state`]).

pub mod datapath;
pub mod server;
pub mod settings;
pub mod state;
pub mod tcp;
pub mod tunnel;
