//! Windows: the owning process of the client's socket
//! (`GetExtendedTcpTable`), then its user's SID.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use windows_sys::Win32::Foundation::{CloseHandle, ERROR_INSUFFICIENT_BUFFER, HANDLE, LocalFree};
use windows_sys::Win32::NetworkManagement::IpHelper::{
    GetExtendedTcpTable, MIB_TCP_STATE_LISTEN, MIB_TCP_STATE_TIME_WAIT, MIB_TCP6ROW_OWNER_PID,
    MIB_TCPROW_OWNER_PID, TCP_TABLE_OWNER_PID_ALL,
};
use windows_sys::Win32::Networking::WinSock::{AF_INET, AF_INET6};
use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
use windows_sys::Win32::Security::{GetTokenInformation, TOKEN_QUERY, TOKEN_USER, TokenUser};
use windows_sys::Win32::System::Threading::{
    OpenProcess, OpenProcessToken, PROCESS_QUERY_LIMITED_INFORMATION,
};

use super::PeerUser;

/// Tries of the size-then-fill call: the table may grow between the two.
const TABLE_TRIES: usize = 4;
/// The largest table read (bytes): 64 MiB is more than a million sockets.
const MAX_TABLE_BYTES: u32 = 64 << 20;

pub(super) fn owner(local: SocketAddr, peer: SocketAddr) -> Option<PeerUser> {
    let pid = owning_pid(local, peer)?;
    Some(user_of(pid).unwrap_or(PeerUser::Unreadable))
}

fn same(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.ip().to_canonical() == b.ip().to_canonical()
}

/// A port as the table stores it: network order in the low 16 bits.
fn port(raw: u32) -> u16 {
    u16::from_be(raw as u16)
}

fn live(state: u32) -> bool {
    state != MIB_TCP_STATE_TIME_WAIT as u32 && state != MIB_TCP_STATE_LISTEN as u32
}

/// The process of the client end of `peer` → `local`, in the IPv4 and the
/// IPv6 table.
fn owning_pid(local: SocketAddr, peer: SocketAddr) -> Option<u32> {
    let client = |l: SocketAddr, r: SocketAddr| same(l, peer) && same(r, local);
    if let Some(buf) = table(AF_INET as u32) {
        let rows: &[MIB_TCPROW_OWNER_PID] = rows(&buf)?;
        if let Some(row) = rows.iter().find(|row| {
            let l = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(row.dwLocalAddr.to_ne_bytes())),
                port(row.dwLocalPort),
            );
            let r = SocketAddr::new(
                IpAddr::V4(Ipv4Addr::from(row.dwRemoteAddr.to_ne_bytes())),
                port(row.dwRemotePort),
            );
            live(row.dwState) && client(l, r)
        }) {
            return Some(row.dwOwningPid);
        }
    }
    let buf = table(AF_INET6 as u32)?;
    let rows: &[MIB_TCP6ROW_OWNER_PID] = rows(&buf)?;
    rows.iter()
        .find(|row| {
            let l = SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(row.ucLocalAddr)),
                port(row.dwLocalPort),
            );
            let r = SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(row.ucRemoteAddr)),
                port(row.dwRemotePort),
            );
            live(row.dwState) && client(l, r)
        })
        .map(|row| row.dwOwningPid)
}

/// The whole table of one address family, in `u32`s (so rows are aligned).
fn table(family: u32) -> Option<Vec<u32>> {
    let mut size: u32 = 0;
    let mut buf: Vec<u32> = Vec::new();
    for _ in 0..TABLE_TRIES {
        // SAFETY: `buf` has room for `size` bytes (rounded up to whole u32s);
        // the call writes at most `size` bytes and updates `size`.
        let status = unsafe {
            GetExtendedTcpTable(
                buf.as_mut_ptr().cast(),
                &mut size,
                0,
                family,
                TCP_TABLE_OWNER_PID_ALL,
                0,
            )
        };
        match status {
            0 => return Some(buf),
            ERROR_INSUFFICIENT_BUFFER if size <= MAX_TABLE_BYTES => {
                buf = vec![0u32; (size as usize).div_ceil(4)];
            }
            _ => return None,
        }
    }
    None
}

/// The rows after the table's `dwNumEntries`, checked against the buffer.
fn rows<T>(buf: &[u32]) -> Option<&[T]> {
    let (&count, _) = buf.split_first()?;
    let offset = std::mem::align_of::<T>().max(4);
    let bytes = std::mem::size_of_val(buf);
    let available = bytes.checked_sub(offset)? / std::mem::size_of::<T>();
    let count = (count as usize).min(available);
    // SAFETY: the rows start after the count at `offset` (both row types are
    // plain u32/u8 arrays, 4-aligned), `count` of them fit in `buf`, and the
    // slice borrows `buf`.
    Some(unsafe {
        std::slice::from_raw_parts(buf.as_ptr().cast::<u8>().add(offset).cast::<T>(), count)
    })
}

/// Closes a handle when dropped.
struct Handle(HANDLE);

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: the handle was opened by this module and is closed once.
        unsafe { CloseHandle(self.0) };
    }
}

/// The string SID of the user `pid` runs as; `None` when this process may
/// not read it.
pub(super) fn user_of(pid: u32) -> Option<PeerUser> {
    // SAFETY: plain calls with owned out-parameters; handles are closed by
    // `Handle`, the SID string freed with `LocalFree`.
    unsafe {
        let process = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if process.is_null() {
            return None;
        }
        let process = Handle(process);
        let mut token: HANDLE = std::ptr::null_mut();
        if OpenProcessToken(process.0, TOKEN_QUERY, &mut token) == 0 {
            return None;
        }
        let token = Handle(token);
        let mut needed: u32 = 0;
        GetTokenInformation(token.0, TokenUser, std::ptr::null_mut(), 0, &mut needed);
        if needed == 0 || needed > 4096 {
            return None;
        }
        let mut info = vec![0u64; (needed as usize).div_ceil(8)];
        if GetTokenInformation(
            token.0,
            TokenUser,
            info.as_mut_ptr().cast(),
            needed,
            &mut needed,
        ) == 0
        {
            return None;
        }
        let user = &*(info.as_ptr().cast::<TOKEN_USER>());
        let mut text: *mut u16 = std::ptr::null_mut();
        if ConvertSidToStringSidW(user.User.Sid, &mut text) == 0 || text.is_null() {
            return None;
        }
        let mut len = 0;
        while *text.add(len) != 0 {
            len += 1;
        }
        let sid = String::from_utf16_lossy(std::slice::from_raw_parts(text, len));
        LocalFree(text.cast());
        Some(PeerUser::Sid(sid))
    }
}
