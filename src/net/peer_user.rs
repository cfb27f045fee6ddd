//! Which local user opened a connection from this machine (loopback, or to
//! the machine's own address), where the operating system tells it: the throttle keys a loopback client's failed logins by
//! that user, because on loopback every client has the address `127.0.0.1`.
//!
//! - Linux: the owner uid of the client's socket in `/proc/net/tcp{,6}`
//!   (readable by every user), found by the client's address and port as
//!   its `local_address` and the proxy's as its `rem_address`.
//! - Windows: `GetExtendedTcpTable`'s owning process of the client's
//!   socket, then that process's user SID. A process whose user this proxy
//!   may not read (another user's, when the proxy is not a service) is
//!   [`PeerUser::Unreadable`]: one key for such processes, never the
//!   proxy's own user's.
//! - Elsewhere (macOS, the BSDs): nothing reliable without privileges, so
//!   no answer; the throttle falls back to the address.

// The `/proc/net/tcp` parser is Linux's; elsewhere only its tests use it.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::net::SocketAddr;

/// The local user behind a loopback connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerUser {
    /// The socket owner's user id (Linux).
    Uid(u32),
    /// The owning process's user, as a string SID (Windows).
    Sid(String),
    /// A local process whose user this proxy is not allowed to read
    /// (Windows, another user's process when the proxy runs as a user).
    Unreadable,
}

impl std::fmt::Display for PeerUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerUser::Uid(uid) => write!(f, "uid {uid}"),
            PeerUser::Sid(sid) => write!(f, "user {sid}"),
            PeerUser::Unreadable => f.write_str("a process of another user"),
        }
    }
}

/// The user that owns the client end of the connection from `peer` to the
/// proxy's `local` address, if the OS tells it. Blocking (it reads a
/// kernel table): call it off the async threads.
pub fn owner(local: SocketAddr, peer: SocketAddr) -> Option<PeerUser> {
    if !from_this_machine(local, peer) {
        return None;
    }
    os::owner(local, peer)
}

/// The user the local process `pid` runs as (the control pipe's client on
/// Windows), `None` when this process may not read it; elsewhere `None`.
pub fn process_user(pid: u32) -> Option<PeerUser> {
    os::user_of(pid)
}

/// Whether the client at `peer` runs on this machine: a loopback address,
/// or the proxy's own address (a local client that dialled the machine's
/// network address).
pub fn from_this_machine(local: SocketAddr, peer: SocketAddr) -> bool {
    let peer = peer.ip().to_canonical();
    peer.is_loopback() || peer == local.ip().to_canonical()
}

/// One socket of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcTcpEntry {
    pub(crate) local: SocketAddr,
    pub(crate) remote: SocketAddr,
    /// `st`: the kernel's TCP state number.
    pub(crate) state: u8,
    pub(crate) uid: u32,
}

/// `st` of a socket in TIME_WAIT (its uid reads 0) and of a listening one.
const TCP_TIME_WAIT: u8 = 0x06;
const TCP_LISTEN: u8 = 0x0A;

impl ProcTcpEntry {
    /// Whether this is the client end of the connection `peer` → `local`.
    pub(crate) fn is_client_of(&self, local: SocketAddr, peer: SocketAddr) -> bool {
        self.state != TCP_TIME_WAIT
            && self.state != TCP_LISTEN
            && same(self.local, peer)
            && same(self.remote, local)
    }
}

/// The same endpoint, an IPv4-mapped IPv6 address and its IPv4 alike (a
/// dual-stack listener sees `::ffff:127.0.0.1` for a client socket the
/// kernel lists in `/proc/net/tcp` as `127.0.0.1`).
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// Parses one line of `/proc/net/tcp` or `/proc/net/tcp6`; `None` for the
/// header and for anything not shaped like an entry.
pub(crate) fn parse_proc_tcp_line(line: &str) -> Option<ProcTcpEntry> {
    let mut fields = line.split_ascii_whitespace();
    let slot = fields.next()?;
    if !slot.ends_with(':') {
        return None;
    }
    let local = parse_endpoint(fields.next()?)?;
    let remote = parse_endpoint(fields.next()?)?;
    let state = hex_u32(fields.next()?, 2)?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, then uid (decimal).
    let uid = fields.nth(3)?;
    if uid.is_empty() || !uid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ProcTcpEntry {
        local,
        remote,
        state: u8::try_from(state).ok()?,
        uid: uid.parse().ok()?,
    })
}

/// `ADDR:PORT`: the address as the kernel's 32-bit words in hex (one for
/// IPv4, four for IPv6), each printed in host byte order from memory that
/// holds the address in network order; the port as 4 hex digits.
fn parse_endpoint(text: &str) -> Option<SocketAddr> {
    let (addr, port) = text.split_once(':')?;
    let port = u16::try_from(hex_u32(port, 4)?).ok()?;
    let ip = match addr.len() {
        8 => std::net::IpAddr::from(hex_u32(addr, 8)?.to_ne_bytes()),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
                let word = addr.get(i * 8..i * 8 + 8)?;
                chunk.copy_from_slice(&hex_u32(word, 8)?.to_ne_bytes());
            }
            std::net::IpAddr::from(bytes)
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Exactly `digits` hex digits (no sign, no prefix).
fn hex_u32(text: &str, digits: usize) -> Option<u32> {
    if text.len() != digits || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(text, 16).ok()
}

/// The client end of `peer` → `local` among `lines`.
pub(crate) fn find_in_proc_tcp(
    lines: impl Iterator<Item = String>,
    local: SocketAddr,
    peer: SocketAddr,
) -> Option<u32> {
    lines
        .filter_map(|line| parse_proc_tcp_line(&line))
        .find(|entry| entry.is_client_of(local, peer))
        .map(|entry| entry.uid)
}

#[cfg(target_os = "linux")]
mod os {
    use std::io::BufRead;
    use std::net::SocketAddr;

    use super::{PeerUser, find_in_proc_tcp};

    /// Both tables: a client on `127.0.0.1` to a dual-stack listener is in
    /// `tcp`, one on `::1` in `tcp6`.
    const TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];

    pub(super) fn owner(local: SocketAddr, peer: SocketAddr) -> Option<PeerUser> {
        TABLES.iter().find_map(|path| {
            let file = std::fs::File::open(path).ok()?;
            let lines = std::io::BufReader::new(file).lines().map_while(Result::ok);
            find_in_proc_tcp(lines, local, peer).map(PeerUser::Uid)
        })
    }

    /// Unix control clients are known by their socket's uid instead.
    pub(super) fn user_of(_pid: u32) -> Option<PeerUser> {
        None
    }
}

#[cfg(windows)]
#[path = "peer_user_windows.rs"]
mod os;

#[cfg(not(any(target_os = "linux", windows)))]
mod os {
    use std::net::SocketAddr;

    use super::PeerUser;

    /// macOS and the BSDs offer no per-socket owner to an unprivileged
    /// process (`lsof` needs root for other users' sockets): no answer.
    pub(super) fn owner(_local: SocketAddr, _peer: SocketAddr) -> Option<PeerUser> {
        None
    }

    pub(super) fn user_of(_pid: u32) -> Option<PeerUser> {
        None
    }
}

#[cfg(test)]
#[path = "peer_user_tests.rs"]
mod tests;
