use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::*;

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::from(a), port)
}

/// Lines as the kernel prints them (x86-64, little-endian), captured from
/// `/proc/net/tcp` and `/proc/net/tcp6`.
const HEADER: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode";
const LISTEN_143: &str = "   0: 0100007F:008F 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 81234 1 0000000000000000 100 0 0 10 0";
const CLIENT_1001: &str = "   1: 0100007F:D431 0100007F:008F 01 00000000:00000000 00:00000000 00000000  1001        0 81240 1 0000000000000000 20 4 30 10 -1";
const SERVER_SIDE: &str = "   2: 0100007F:008F 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 81241 1 0000000000000000 20 4 30 10 -1";
const TIME_WAIT: &str = "   3: 0100007F:D432 0100007F:008F 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000";
const V6_LOOPBACK: &str = "   0: 00000000000000000000000001000000:C350 00000000000000000000000001000000:03E1 01 00000000:00000000 00:00000000 00000000  1002        0 91234 1 0000000000000000 20 4 29 10 -1";
const V6_MAPPED: &str = "   1: 0000000000000000FFFF00000100007F:C351 0000000000000000FFFF00000100007F:03E1 01 00000000:00000000 00:00000000 00000000  1003        0 91235 1 0000000000000000 20 4 29 10 -1";

#[test]
fn kernel_lines_parse_to_their_endpoints_and_owner() {
    let e = parse_proc_tcp_line(CLIENT_1001).expect("parses");
    assert_eq!(e.local, v4([127, 0, 0, 1], 0xD431));
    assert_eq!(e.remote, v4([127, 0, 0, 1], 143));
    assert_eq!((e.state, e.uid), (1, 1001));
    let e = parse_proc_tcp_line(V6_LOOPBACK).expect("parses");
    assert_eq!(e.local, SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0xC350));
    assert_eq!(e.uid, 1002);
    let e = parse_proc_tcp_line(V6_MAPPED).expect("parses");
    assert_eq!(
        e.local.ip(),
        IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped()),
        "an IPv4-mapped IPv6 address"
    );
}

#[test]
fn hostile_lines_are_skipped_without_panicking() {
    let table: &[(&str, &str)] = &[
        ("empty", ""),
        ("header", HEADER),
        ("slot only", "   0:"),
        ("short line", "   0: 0100007F:D431 0100007F:008F 01"),
        (
            "no uid",
            "   0: 0100007F:D431 0100007F:008F 01 00000000:00000000 00:00000000 00000000",
        ),
        (
            "slot without colon",
            "   0 0100007F:D431 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "bad hex in address",
            "   0: 0100007G:D431 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "bad hex in port",
            "   0: 0100007F:D4Z1 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "sign in hex",
            "   0: +100007F:D431 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "0x prefix",
            "   0: 0x00007F:D431 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "address too short",
            "   0: 100007F:D431 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "address between lengths",
            "   0: 0100007F00:D431 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "port too long",
            "   0: 0100007F:0D431 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "no port",
            "   0: 0100007F 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "two colons",
            "   0: 0100007F:D4:31 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "state too long",
            "   0: 0100007F:D431 0100007F:008F 001 0:0 00:0 0 1000 0 1",
        ),
        (
            "negative uid",
            "   0: 0100007F:D431 0100007F:008F 01 0:0 00:0 0 -1 0 1",
        ),
        (
            "uid overflows",
            "   0: 0100007F:D431 0100007F:008F 01 0:0 00:0 0 4294967296 0 1",
        ),
        (
            "uid in hex",
            "   0: 0100007F:D431 0100007F:008F 01 0:0 00:0 0 3E8 0 1",
        ),
        (
            "multibyte in a 32-digit address",
            "   0: 000000000000000000000000010000é:C350 00000000000000000000000001000000:03E1 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "multibyte where a port is",
            "   0: 0100007F:é1 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
        (
            "NUL bytes",
            "   0: 0100007F:D431\0 0100007F:008F 01 0:0 00:0 0 1000 0 1",
        ),
    ];
    for (what, line) in table {
        assert_eq!(parse_proc_tcp_line(line), None, "{what}: {line:?}");
    }
    // The smallest line that is an entry: the fields up to uid.
    assert!(parse_proc_tcp_line("0: 0100007F:D431 0100007F:008F 01 0:0 00:0 0 1000").is_some());
}

#[test]
fn the_client_end_is_found_not_the_server_end_or_a_closed_one() {
    let server = v4([127, 0, 0, 1], 143);
    let lines = || {
        [
            HEADER,
            LISTEN_143,
            SERVER_SIDE,
            TIME_WAIT,
            "garbage",
            CLIENT_1001,
        ]
        .into_iter()
        .map(String::from)
    };
    let cases: &[(&str, SocketAddr, SocketAddr, Option<u32>)] = &[
        (
            "the client's socket",
            server,
            v4([127, 0, 0, 1], 0xD431),
            Some(1001),
        ),
        ("a port nobody uses", server, v4([127, 0, 0, 1], 1), None),
        (
            "TIME_WAIT has no owner",
            server,
            v4([127, 0, 0, 1], 0xD432),
            None,
        ),
        (
            "another server port",
            v4([127, 0, 0, 1], 993),
            v4([127, 0, 0, 1], 0xD431),
            None,
        ),
        (
            "another client address",
            server,
            v4([127, 0, 0, 2], 0xD431),
            None,
        ),
        (
            "a dual-stack listener sees a mapped address",
            SocketAddr::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), 143),
            SocketAddr::new(Ipv4Addr::LOCALHOST.to_ipv6_mapped().into(), 0xD431),
            Some(1001),
        ),
    ];
    for (what, local, peer, want) in cases {
        assert_eq!(find_in_proc_tcp(lines(), *local, *peer), *want, "{what}");
    }
    let v6 = [V6_LOOPBACK, V6_MAPPED].into_iter().map(String::from);
    assert_eq!(
        find_in_proc_tcp(
            v6,
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0x03E1),
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0xC351),
        ),
        Some(1003),
        "an IPv4 client listed in tcp6 as mapped"
    );
}

#[test]
fn only_clients_on_this_machine_are_looked_up() {
    let table: &[(&str, &str, bool)] = &[
        ("127.0.0.1:143", "127.0.0.1:50000", true),
        ("127.0.0.1:143", "127.8.9.10:50000", true),
        ("[::1]:143", "[::1]:50000", true),
        ("[::]:143", "[::ffff:127.0.0.1]:50000", true),
        ("192.0.2.1:143", "192.0.2.1:50000", true),
        ("[::ffff:192.0.2.1]:143", "192.0.2.1:50000", true),
        ("192.0.2.1:143", "192.0.2.7:50000", false),
        ("[2001:db8::1]:143", "[2001:db8::2]:50000", false),
    ];
    for (local, peer, want) in table {
        let (local, peer) = (local.parse().unwrap(), peer.parse().unwrap());
        assert_eq!(from_this_machine(local, peer), *want, "{local} <- {peer}");
    }
}

#[test]
fn other_machines_are_not_looked_up() {
    assert_eq!(
        owner(v4([127, 0, 0, 1], 143), v4([192, 0, 2, 1], 50000)),
        None
    );
}

/// The real table: a connection this test opens is owned by the test's uid.
#[cfg(target_os = "linux")]
#[test]
fn a_real_socket_of_this_process_is_owned_by_its_uid() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (_server_end, peer) = listener.accept().unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        owner(listener.local_addr().unwrap(), peer),
        Some(PeerUser::Uid(uid))
    );
}
