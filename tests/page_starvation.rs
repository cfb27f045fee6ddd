//! The local page cannot be starved, and cannot starve the proxy: the
//! attack of the "shared machine" review replayed against the real binary.
//! Another local user opens hundreds of half-sent requests to the page; the
//! page serves at most its cap, closes what it holds once the header
//! timeout passes, refuses the rest at once, and an IMAP login through a
//! mail listener works all along, with the process's open file limit below
//! the number of attacking connections. The proxy also raises its soft open
//! file limit to the hard one at start.

mod harness;
mod support;

use std::io::Read as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::{Listener, PASSWORD, config_text_listeners, imap, seed_tokens};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Half-sent requests the attacker opens: more than the process may have
/// open files (`HARD_FILE_LIMIT`).
const ATTACK_CONNECTIONS: usize = 300;
/// The hard limit of open files the proxy runs under here.
const HARD_FILE_LIMIT: u64 = 256;
/// Its soft limit at exec (the proxy raises it to the hard one).
const SOFT_FILE_LIMIT: u64 = 100;
/// The page's header timeout in this test (`admin_timeout_secs`).
const PAGE_TIMEOUT_SECS: u64 = 2;
/// The page's connection cap (`admin::serve::MAX_PAGE_CONNECTIONS`).
const PAGE_CAP: usize = 64;

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The proxy binary, run under `ulimit` by a shell that execs it (so the
/// child's pid is the proxy's); stderr goes to a file.
struct Proxy {
    child: std::process::Child,
    stderr: std::path::PathBuf,
}

impl Proxy {
    fn spawn(config: &std::path::Path, dir: &std::path::Path) -> Proxy {
        let stderr = dir.join("proxy.log");
        let log = std::fs::File::create(&stderr).expect("log file");
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -S -n {SOFT_FILE_LIMIT} && ulimit -H -n {HARD_FILE_LIMIT} && \
                 exec \"$0\" --config \"$1\" run"
            ))
            .arg(env!("CARGO_BIN_EXE_xoauth2-proxy"))
            .arg(config)
            .env("RUST_LOG", "xoauth2_proxy=debug")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the proxy");
        Proxy { child, stderr }
    }

    fn log(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(&self.stderr).and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    /// The soft and hard open file limits of the running proxy.
    fn file_limits(&self) -> (u64, u64) {
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", self.child.id()))
            .expect("/proc/PID/limits");
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("a Max open files line");
        let figures: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        (figures[0], figures[1])
    }

    /// Waits until `addr` accepts connections (the proxy is up), bounded.
    async fn wait_listening(&mut self, addr: SocketAddr) {
        let started = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            if let Some(status) = self.child.try_wait().expect("child status") {
                panic!("the proxy exited ({status}):\n{}", self.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the proxy did not listen on {addr}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One attacking connection: a request head without its final empty line.
/// Returns how long the page kept it open and whether it answered.
async fn half_sent(addr: SocketAddr) -> (Duration, Vec<u8>) {
    let started = Instant::now();
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return (started.elapsed(), Vec::new());
    };
    let head = format!(
        "GET / HTTP/1.1\r\nHost: localhost:{}\r\nX-Slow: 1",
        addr.port()
    );
    let _ = s.write_all(head.as_bytes()).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    // Bounded, so a page that never closes fails the test instead of hanging it.
    let _ = tokio::time::timeout(Duration::from_secs(PAGE_TIMEOUT_SECS + 10), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    (started.elapsed(), got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_are_timed_out_and_capped_while_logins_go_on() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(dir.path(), &tokens);
    let page: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let upstream = imap(server.addr);
    let text = config_text_listeners(
        &pki,
        dir.path(),
        &tokens.url(),
        &[Listener {
            upstream: &upstream,
            listen: &listen.to_string(),
            extra: "",
        }],
        &format!("admin_listen = \"{page}\"\nadmin_timeout_secs = {PAGE_TIMEOUT_SECS}\n"),
    );
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).unwrap();
    let mut proxy = Proxy::spawn(&config, dir.path());
    proxy.wait_listening(page).await;
    proxy.wait_listening(listen).await;

    // The soft limit was raised to the hard one, and the figure logged.
    assert_eq!(
        proxy.file_limits(),
        (HARD_FILE_LIMIT, HARD_FILE_LIMIT),
        "{}",
        proxy.log()
    );
    assert!(proxy.log().contains("open file limit"), "{}", proxy.log());

    let attack: Vec<_> = (0..ATTACK_CONNECTIONS)
        .map(|_| tokio::spawn(half_sent(page)))
        .collect();
    // While the page holds what it can: an IMAP login through the listener.
    // (The attack is under way: the page refuses over its cap right away.)
    let mut client = TestClient::connect(listen).await;
    client.expect_prefix(b"* OK").await;
    client
        .send(format!("a1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    let reply = client.read_until_tagged("a1").await;
    let last = String::from_utf8_lossy(reply.last().unwrap()).into_owned();
    assert!(last.starts_with("a1 OK"), "{last}\n{}", proxy.log());

    let mut held = Vec::new();
    let mut refused = 0;
    for task in attack {
        let (open, answer) = task.await.expect("attacking connection");
        assert!(
            open < Duration::from_secs(PAGE_TIMEOUT_SECS + 9),
            "a half-sent request stayed open {open:?}"
        );
        if open >= Duration::from_secs(PAGE_TIMEOUT_SECS) - Duration::from_millis(500) {
            // Served, then closed by the header timeout; never answered 200.
            assert!(!answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
            held.push(open);
        } else {
            refused += 1;
        }
    }
    assert!(
        !held.is_empty() && held.len() <= PAGE_CAP,
        "{} connections held (cap {PAGE_CAP}), {refused} refused",
        held.len()
    );
    assert_eq!(held.len() + refused, ATTACK_CONNECTIONS);
    let log = proxy.log();
    assert!(log.contains("refusing more"), "{log}");

    // The attack is over: the page answers again.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("http://{page}/"))
        .send()
        .await
        .expect("GET / after the attack");
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
}

/// A kept-alive connection that says nothing more is closed after the
/// timeout too, and a body that never comes does not hold a request.
#[tokio::test]
async fn idle_and_slow_body_connections_are_closed() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = imap(server.addr);
    let text = config_text_listeners(
        &pki,
        dir.path(),
        &tokens.url(),
        &[Listener {
            upstream: &upstream,
            listen: "127.0.0.1:0",
            extra: "",
        }],
        "admin_listen = \"127.0.0.1:0\"\nadmin_timeout_secs = 1\n",
    );
    let running = harness::start(&text).await;
    let page = running.admin_addr.expect("the page is served");
    let host = format!("Host: localhost:{}\r\n", page.port());

    // Kept alive after a full answer, then silent.
    let mut s = TcpStream::connect(page).await.unwrap();
    let started = Instant::now();
    s.write_all(format!("GET / HTTP/1.1\r\n{host}\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    assert!(got.starts_with(b"HTTP/1.1 200"), "{got:?}");
    let open = started.elapsed();
    assert!(
        open >= Duration::from_millis(900) && open < Duration::from_secs(10),
        "idle connection open {open:?}"
    );

    // A POST whose body never comes.
    let mut s = TcpStream::connect(page).await.unwrap();
    let started = Instant::now();
    s.write_all(
        format!(
            "POST /signin HTTP/1.1\r\n{host}Origin: http://localhost:{}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nacc",
            page.port()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut got)).await;
    assert!(
        got.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    running.shutdown().await;
}
