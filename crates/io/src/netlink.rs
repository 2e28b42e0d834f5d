//! Minimal rtnetlink client: add/remove interface addresses and routes.
//!
//! Hand-rolled (`NETLINK_ROUTE` socket, one request, wait for the ACK) so the crate
//! needs no netlink dependency. Each call opens its own socket; these are control-path
//! operations (milliseconds are fine).

use std::io;
use std::net::IpAddr;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_REPLACE: u16 = 0x100;

const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;

const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTN_UNICAST: u8 = 1;
const IFA_F_PERMANENT: u8 = 0x80;
/// No duplicate address detection: on a point-to-point tunnel there is no
/// one to collide with, and a tentative address cannot be bound for ~1 s.
const IFA_F_NODAD: u8 = 0x02;

/// Options for [`add_route`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RouteOptions {
    /// Routing table (`None` = main).
    pub table: Option<u32>,
    /// Route metric / priority.
    pub metric: Option<u32>,
    /// Replace an existing route with the same key instead of failing with `EEXIST`.
    pub replace: bool,
}

struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes()); // seq
        Msg { buf }
    }
    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        while self.buf.len() & 3 != 0 {
            self.buf.push(0);
        }
    }
    fn attr(&mut self, ty: u16, payload: &[u8]) {
        let len = (4 + payload.len()) as u16;
        let mut a = Vec::with_capacity(4 + payload.len());
        a.extend_from_slice(&len.to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(payload);
        self.push(&a);
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn check_prefix(ip: &IpAddr, prefix: u8) -> io::Result<()> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if prefix > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("prefix length /{prefix} too long for {ip}"),
        ));
    }
    Ok(())
}

/// Zero the host bits of `ip/prefix`.
pub fn network_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            IpAddr::V6((u128::from(a) & mask).into())
        }
    }
}

/// Send one request and wait for its ACK.
fn request(msg: Vec<u8>, what: &str) -> io::Result<()> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(ctx(io::Error::last_os_error(), what));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: zeroed sockaddr_nl is valid (pid 0 = kernel).
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: msg is a valid buffer, sa a valid sockaddr_nl.
    let rc = unsafe {
        libc::sendto(
            raw,
            msg.as_ptr() as *const libc::c_void,
            msg.len(),
            0,
            &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(ctx(io::Error::last_os_error(), what));
    }
    let mut buf = [0u8; 8192];
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::recv(raw, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(ctx(e, what));
        }
        let n = n as usize;
        let mut off = 0;
        while off + NLMSG_HDRLEN <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < NLMSG_HDRLEN || off + len > n {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{what}: malformed netlink reply"),
                ));
            }
            if ty == NLMSG_ERROR {
                if len < NLMSG_HDRLEN + 4 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{what}: short netlink error"),
                    ));
                }
                let p = off + NLMSG_HDRLEN;
                let errno = i32::from_ne_bytes([buf[p], buf[p + 1], buf[p + 2], buf[p + 3]]);
                if errno == 0 {
                    return Ok(());
                }
                return Err(ctx(io::Error::from_raw_os_error(-errno), what));
            }
            off += (len + 3) & !3;
        }
    }
}

fn ctx(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn addr_msg(ty: u16, flags: u16, ifindex: u32, ip: IpAddr, prefix: u8) -> Vec<u8> {
    let mut m = Msg::new(ty, flags);
    // struct ifaddrmsg { u8 family, u8 prefixlen, u8 flags, u8 scope, u32 index }
    let mut ifa = [0u8; 8];
    ifa[0] = family(&ip);
    ifa[1] = prefix;
    ifa[2] = IFA_F_PERMANENT | if ip.is_ipv6() { IFA_F_NODAD } else { 0 };
    ifa[3] = RT_SCOPE_UNIVERSE;
    ifa[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m.push(&ifa);
    let b = ip_bytes(&ip);
    m.attr(IFA_LOCAL, &b);
    m.attr(IFA_ADDRESS, &b);
    m.finish()
}

/// Add `ip/prefix` to the interface `ifindex` (like `ip addr add`). `EEXIST` is an error.
pub fn add_address(ifindex: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
    check_prefix(&ip, prefix)?;
    request(
        addr_msg(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, ifindex, ip, prefix),
        &format!("add address {ip}/{prefix} to ifindex {ifindex}"),
    )
}

/// Remove `ip/prefix` from the interface `ifindex`.
pub fn remove_address(ifindex: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
    check_prefix(&ip, prefix)?;
    request(
        addr_msg(RTM_DELADDR, 0, ifindex, ip, prefix),
        &format!("remove address {ip}/{prefix} from ifindex {ifindex}"),
    )
}

fn route_msg(
    ty: u16,
    flags: u16,
    ifindex: u32,
    dst: IpAddr,
    prefix: u8,
    opts: &RouteOptions,
) -> Vec<u8> {
    let mut m = Msg::new(ty, flags);
    let table = opts.table.unwrap_or(u32::from(RT_TABLE_MAIN));
    // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type, u32 flags }
    let rtm = [
        family(&dst),
        prefix,
        0,
        0,
        if table < 256 { table as u8 } else { 252 }, // RT_TABLE_COMPAT; real id in RTA_TABLE
        if ty == RTM_NEWROUTE { RTPROT_STATIC } else { 0 },
        if ty == RTM_NEWROUTE {
            RT_SCOPE_LINK
        } else {
            RT_SCOPE_NOWHERE
        },
        if ty == RTM_NEWROUTE { RTN_UNICAST } else { 0 },
        0,
        0,
        0,
        0,
    ];
    m.push(&rtm);
    if prefix > 0 {
        m.attr(RTA_DST, &ip_bytes(&network_of(dst, prefix)));
    }
    m.attr(RTA_OIF, &ifindex.to_ne_bytes());
    m.attr(RTA_TABLE, &table.to_ne_bytes());
    if let Some(metric) = opts.metric {
        m.attr(RTA_PRIORITY, &metric.to_ne_bytes());
    }
    m.finish()
}

/// Add a route `dst/prefix dev <ifindex>` (link scope, no gateway), like
/// `ip route add dst/prefix dev IF [table T] [metric M]`. Host bits of `dst` are cleared.
pub fn add_route(ifindex: u32, dst: IpAddr, prefix: u8, opts: &RouteOptions) -> io::Result<()> {
    check_prefix(&dst, prefix)?;
    let flags = NLM_F_CREATE
        | if opts.replace {
            NLM_F_REPLACE
        } else {
            NLM_F_EXCL
        };
    request(
        route_msg(RTM_NEWROUTE, flags, ifindex, dst, prefix, opts),
        &format!("add route {dst}/{prefix} dev ifindex {ifindex}"),
    )
}

/// Remove the route `dst/prefix dev <ifindex>` (in `opts.table`, main by default).
pub fn remove_route(ifindex: u32, dst: IpAddr, prefix: u8, opts: &RouteOptions) -> io::Result<()> {
    check_prefix(&dst, prefix)?;
    request(
        route_msg(RTM_DELROUTE, 0, ifindex, dst, prefix, opts),
        &format!("remove route {dst}/{prefix} dev ifindex {ifindex}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_masks() {
        assert_eq!(
            network_of("198.51.100.77".parse().unwrap(), 24),
            "198.51.100.0".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network_of("2001:db8::1".parse().unwrap(), 32),
            "2001:db8::".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            network_of("1.2.3.4".parse().unwrap(), 0),
            "0.0.0.0".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn message_layout() {
        let m = addr_msg(RTM_NEWADDR, 0, 7, "10.0.0.1".parse().unwrap(), 24);
        // header 16 + ifaddrmsg 8 + 2 attrs of 8
        assert_eq!(m.len(), 16 + 8 + 8 + 8);
        assert_eq!(
            u32::from_ne_bytes([m[0], m[1], m[2], m[3]]) as usize,
            m.len()
        );
        assert_eq!(m[16], libc::AF_INET as u8);
        assert_eq!(m[17], 24);
    }
}
