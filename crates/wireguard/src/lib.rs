//! polytun-wireguard
