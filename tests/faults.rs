//! Faults on every side of the proxy, hermetic: a token endpoint that is
//! down, slow or answers nonsense; upstreams that refuse, fail TLS, close at
//! the worst moment or throttle; clients that misbehave; a disk that refuses
//! the token write. Each case checks that the client gets a clear,
//! protocol-correct reply, that no token is lost, that no file descriptor is
//! left open once the connections are gone, and that the proxy still serves
//! the next client.
//!
//! The fd count is per process and the fakes live in this process too, so the
//! cases run one at a time (`SERIAL`).

mod harness;
mod support;

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{PASSWORD, SEED_REFRESH, Upstream, config_text, dead_addr, imap, pop3, smtp, start};
use secrecy::SecretString;
use support::conn::{LineConn, spawn_accept_loop};
use support::token_server::{GRANT_REFRESH, TokenState};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use xoauth2_proxy::auth::vault::{StoredTokens, TokenStore};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

// ---------------------------------------------------------------------------
// File descriptors.

fn open_fds() -> Vec<String> {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .filter_map(Result::ok)
        .map(|e| {
            std::fs::read_link(e.path())
                .map(|t| t.display().to_string())
                .unwrap_or_default()
        })
        .collect()
}

/// The fd count once it has stopped moving (sockets closing after a goodbye).
async fn settled_fds() -> usize {
    let mut last = open_fds().len();
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let now = open_fds().len();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// Waits until the process holds no more fds than at `baseline`: every
/// socket of the finished connections, on both sides, is closed.
async fn no_leaked_fds(baseline: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fds = open_fds();
        if fds.len() <= baseline {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{} fds open, {baseline} before the fault: {fds:?}",
                fds.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// A proxy with a healthy IMAP listener (0) and optionally a faulty one (1).

struct Rig {
    _pki: TestPki,
    token_state: Arc<TokenState>,
    /// The fake token endpoint, when it runs at `token_base`.
    tokens: Option<FakeTokenServer>,
    state_dir: tempfile::TempDir,
    healthy: FakeImapServer,
    running: xoauth2_proxy::Running,
}

struct RigOptions<'a> {
    /// `None`: the fake token endpoint; `Some(addr)`: the proxy is pointed
    /// at `addr`, where the test decides what (if anything) listens.
    token_addr: Option<SocketAddr>,
    faulty: Option<Upstream>,
    proxy_extra: &'a str,
    connect_timeout_secs: u64,
}

impl Default for RigOptions<'_> {
    fn default() -> Self {
        RigOptions {
            token_addr: None,
            faulty: None,
            proxy_extra: "",
            connect_timeout_secs: 5,
        }
    }
}

async fn rig_with(pki: TestPki, opts: RigOptions<'_>) -> Rig {
    let token_state = Arc::new(TokenState::new());
    let tokens = match opts.token_addr {
        None => Some(FakeTokenServer::start_with(token_state.clone()).await),
        Some(_) => None,
    };
    let token_base = match (&tokens, opts.token_addr) {
        (Some(t), _) => t.url(),
        (None, Some(addr)) => format!("http://{addr}"),
        (None, None) => unreachable!(),
    };
    let healthy = FakeImapServer::start(&pki, token_state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed(state_dir.path(), &token_state);
    let mut upstreams = vec![imap(healthy.addr)];
    upstreams.extend(opts.faulty);
    let text = config_text(
        &pki,
        state_dir.path(),
        &token_base,
        &upstreams,
        opts.proxy_extra,
    )
    .replace(
        "connect_timeout_secs = 5",
        &format!("connect_timeout_secs = {}", opts.connect_timeout_secs),
    );
    let running = start(&text).await;
    Rig {
        _pki: pki,
        token_state,
        tokens,
        state_dir,
        healthy,
        running,
    }
}

async fn rig(opts: RigOptions<'_>) -> Rig {
    rig_with(TestPki::new(), opts).await
}

/// The state `authorize` leaves: a refresh token the endpoint accepts.
fn seed(state_dir: &Path, tokens: &TokenState) {
    tokens.seed_refresh_token(SEED_REFRESH);
    harness::seal_tokens(
        state_dir,
        USER,
        PASSWORD,
        &StoredTokens {
            refresh_token: Some(SecretString::from(SEED_REFRESH.to_owned())),
            access_token: None,
            expires_at: None,
        },
    );
}

impl Rig {
    fn addr(&self, i: usize) -> SocketAddr {
        self.running.addrs[i]
    }

    fn token_file(&self) -> Vec<u8> {
        std::fs::read(TokenStore::new(self.state_dir.path()).path_for(USER))
            .expect("the token file is still there")
    }

    /// A login, a NOOP and a LOGOUT through listener 0, then the healthy
    /// upstream's connection closed: the reference state for the fd count.
    async fn warm_up(&self) -> usize {
        login_and_logout(self.addr(0)).await;
        self.upstreams_closed().await;
        settled_fds().await
    }

    async fn upstreams_closed(&self) {
        self.healthy
            .state
            .wait_until("upstream connections closed", |s| {
                s.active_connections() == 0
            })
            .await;
    }

    /// The next client logs in, perhaps after a transient error's hold time.
    async fn next_client_logs_in(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (mut c, line) = imap_login(self.addr(0), "n1").await;
            if line.starts_with("n1 OK ") {
                noop_and_logout(&mut c).await;
                return;
            }
            assert!(
                line.starts_with("n1 NO [UNAVAILABLE] "),
                "while waiting to recover: {line}"
            );
            assert!(
                Instant::now() < deadline,
                "the proxy did not recover: {line}"
            );
            logout(&mut c).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

// ---------------------------------------------------------------------------
// Client helpers.

async fn imap_client(addr: SocketAddr) -> TestClient {
    let mut c = TestClient::connect(addr).await;
    c.expect_prefix(b"* OK ").await;
    c
}

/// Connects, sends LOGIN, returns the client and the tagged answer.
async fn imap_login(addr: SocketAddr, tag: &str) -> (TestClient, String) {
    let mut c = imap_client(addr).await;
    c.send(format!("{tag} LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    let line = tagged_line(&mut c, tag).await;
    (c, line)
}

/// Skips untagged lines; returns the tagged one without its CRLF.
async fn tagged_line(c: &mut TestClient, tag: &str) -> String {
    loop {
        let line = c.read_line_str().await;
        if !line.starts_with("* ") {
            assert!(line.starts_with(&format!("{tag} ")), "{line}");
            return line;
        }
    }
}

async fn noop_and_logout(c: &mut TestClient) {
    c.send(b"z1 NOOP\r\n").await;
    let line = tagged_line(c, "z1").await;
    assert!(line.starts_with("z1 OK"), "{line}");
    logout(c).await;
}

async fn logout(c: &mut TestClient) {
    c.send(b"z2 LOGOUT\r\n").await;
    let line = tagged_line(c, "z2").await;
    assert!(line.starts_with("z2 OK"), "{line}");
    c.read_to_end().await;
}

async fn login_and_logout(addr: SocketAddr) {
    let (mut c, line) = imap_login(addr, "w1").await;
    assert!(line.starts_with("w1 OK "), "{line}");
    noop_and_logout(&mut c).await;
}

fn unavailable(line: &str, tag: &str) {
    assert!(
        line.starts_with(&format!("{tag} NO [UNAVAILABLE] ")),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// Token endpoint faults.

/// Puts the fake endpoint in `mode` after a warm-up, forces a refresh, and
/// returns the client's answer; checks fds, recovery and the token file.
async fn token_mode_fault(mode: Mode) -> String {
    let rig = rig(RigOptions::default()).await;
    let baseline = rig.warm_up().await;
    let file_before = rig.token_file();
    rig.token_state.set_mode(mode);
    rig.running.context.gate.tokens().discard_access_token(USER);

    let (mut c, line) = imap_login(rig.addr(0), "t1").await;
    // Logged in or refused, the connection stays usable.
    noop_and_logout(&mut c).await;
    drop(c);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;

    rig.token_state.set_mode(Mode::Normal);
    if !line.starts_with("t1 OK ") {
        // A failed refresh wrote nothing: the sealed tokens are as they were.
        assert_eq!(rig.token_file(), file_before);
    }
    line
}

#[tokio::test]
async fn token_endpoint_http_500_is_unavailable() {
    let _serial = SERIAL.lock().await;
    let line = token_mode_fault(Mode::Status(500)).await;
    unavailable(&line, "t1");
    // The status is in the log; the client hears a fixed text.
    assert!(line.contains("try again later"), "{line}");
}

#[tokio::test]
async fn token_endpoint_429_is_unavailable_and_its_retry_after_is_kept() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions::default()).await;
    let baseline = rig.warm_up().await;
    rig.token_state.set_mode(Mode::TooManyRequests {
        retry_after_secs: 2,
    });
    rig.running.context.gate.tokens().discard_access_token(USER);
    let asked = rig.token_state.requests(GRANT_REFRESH);
    let (mut c, line) = imap_login(rig.addr(0), "t1").await;
    unavailable(&line, "t1");
    assert!(line.contains("try again later"), "{line}");
    // Asking again at once does not hit the endpoint again.
    rig.token_state.set_mode(Mode::Normal);
    c.send(format!("t2 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    let again = tagged_line(&mut c, "t2").await;
    unavailable(&again, "t2");
    assert_eq!(rig.token_state.requests(GRANT_REFRESH), asked + 1);
    logout(&mut c).await;
    drop(c);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    rig.next_client_logs_in().await;
}

#[tokio::test]
async fn token_endpoint_invalid_grant_asks_for_a_sign_in() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions::default()).await;
    let baseline = rig.warm_up().await;
    rig.token_state.set_mode(Mode::InvalidGrant);
    rig.running.context.gate.tokens().discard_access_token(USER);
    let (mut c, line) = imap_login(rig.addr(0), "t1").await;
    assert!(
        line.starts_with("t1 NO [AUTHENTICATIONFAILED] ") && line.contains("authorize"),
        "{line}"
    );
    noop_and_logout(&mut c).await;
    drop(c);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    // After a new sign-in the next client is served.
    rig.token_state.set_mode(Mode::Normal);
    seed(rig.state_dir.path(), &rig.token_state);
    rig.next_client_logs_in().await;
}

#[tokio::test]
async fn token_endpoint_malformed_json_is_unavailable() {
    let _serial = SERIAL.lock().await;
    let line = token_mode_fault(Mode::MalformedJson).await;
    unavailable(&line, "t1");
    assert!(line.contains("try again later"), "{line}");
}

#[tokio::test]
async fn a_token_without_expires_in_is_used() {
    let _serial = SERIAL.lock().await;
    let line = token_mode_fault(Mode::NoExpiresIn).await;
    assert!(line.starts_with("t1 OK "), "{line}");
}

#[tokio::test]
async fn token_endpoint_refused_is_unavailable_until_it_comes_back() {
    let _serial = SERIAL.lock().await;
    let token_addr = dead_addr().await;
    let mut rig = rig(RigOptions {
        token_addr: Some(token_addr),
        ..RigOptions::default()
    })
    .await;
    let baseline = capability_warm_up(&rig).await;
    let (mut c, line) = imap_login(rig.addr(0), "t1").await;
    unavailable(&line, "t1");
    assert!(line.contains("token endpoint"), "{line}");
    noop_and_logout(&mut c).await;
    drop(c);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;

    rig.tokens = Some(FakeTokenServer::start_on(token_addr, rig.token_state.clone()).await);
    rig.next_client_logs_in().await;
}

#[tokio::test]
async fn a_token_endpoint_that_hangs_is_cut_at_the_timeout() {
    let _serial = SERIAL.lock().await;
    let token_addr = dead_addr().await;
    let mut rig = rig(RigOptions {
        token_addr: Some(token_addr),
        connect_timeout_secs: 1,
        ..RigOptions::default()
    })
    .await;
    let baseline = capability_warm_up(&rig).await;
    let black_hole = black_hole(token_addr).await;

    let started = Instant::now();
    let (mut c, line) = imap_login(rig.addr(0), "t1").await;
    unavailable(&line, "t1");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    noop_and_logout(&mut c).await;
    drop(c);
    rig.upstreams_closed().await;
    // The proxy closed its request; the black hole saw the end of it.
    no_leaked_fds(baseline + 1).await;
    drop(black_hole);
    no_leaked_fds(baseline).await;

    rig.tokens = Some(FakeTokenServer::start_on(token_addr, rig.token_state.clone()).await);
    rig.next_client_logs_in().await;
}

/// Warm-up without a token: a connection that asks for capabilities and
/// logs out (the token endpoint may be down).
async fn capability_warm_up(rig: &Rig) -> usize {
    let mut c = imap_client(rig.addr(0)).await;
    c.send(b"w1 CAPABILITY\r\n").await;
    tagged_line(&mut c, "w1").await;
    logout(&mut c).await;
    drop(c);
    rig.upstreams_closed().await;
    settled_fds().await
}

/// Accepts connections and never answers; each is dropped when its peer
/// closes. Counts as one fd (the listener) while it runs.
async fn black_hole(addr: SocketAddr) -> AbortOnDrop {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("bind the black hole");
    AbortOnDrop(tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    }))
}

// ---------------------------------------------------------------------------
// Upstream faults.

/// What a scripted upstream IMAP server does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Script {
    /// Answers the TLS ClientHello with plaintext.
    NotTls,
    /// TLS, then closes before any greeting.
    CloseBeforeGreeting,
    /// TLS, half a greeting line, close.
    HalfGreeting,
    /// Greeting, then closes when AUTHENTICATE arrives.
    CloseAtAuth,
    /// Office 365 under load: the AUTHENTICATE is refused as throttled.
    Throttled,
    /// Logs in, then closes 1 MiB into a 4 MiB FETCH.
    CloseMidFetch,
}

const THROTTLED: &str = "NO Request is throttled. Suggested Backoff Time: 1000 milliseconds";
const PARTIAL: usize = 1024 * 1024;

async fn scripted_imap(pki: &TestPki, script: Script) -> (SocketAddr, AbortOnDrop) {
    let config = pki.server_config.clone();
    spawn_accept_loop("scripted IMAP", move |tcp| {
        let config = config.clone();
        async move {
            let _ = run_script(tcp, config, script).await;
        }
    })
    .await
}

async fn run_script(
    mut tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    script: Script,
) -> io::Result<()> {
    if script == Script::NotTls {
        let mut hello = [0u8; 512];
        let _ = tcp.read(&mut hello).await?;
        tcp.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await?;
        return Ok(());
    }
    let mut conn = LineConn::plain(tcp).accept_tls(config).await?;
    match script {
        Script::CloseBeforeGreeting => return Ok(()),
        Script::HalfGreeting => return conn.write_all(b"* OK [CAPABI").await,
        _ => {}
    }
    conn.write_all(b"* OK [CAPABILITY IMAP4rev1 AUTH=XOAUTH2 SASL-IR] scripted\r\n")
        .await?;
    while let Some(line) = conn.read_line(64 * 1024).await? {
        let text = String::from_utf8_lossy(&line).into_owned();
        let mut words = text.split_whitespace();
        let tag = words.next().unwrap_or("*").to_owned();
        let command = words.next().unwrap_or_default().to_ascii_uppercase();
        match command.as_str() {
            "AUTHENTICATE" => match script {
                Script::CloseAtAuth => return Ok(()),
                Script::Throttled => {
                    conn.write_all(format!("{tag} {THROTTLED}\r\n").as_bytes())
                        .await?
                }
                _ => {
                    conn.write_all(format!("{tag} OK AUTHENTICATE completed.\r\n").as_bytes())
                        .await?
                }
            },
            "FETCH" => {
                conn.write_all(b"* 1 FETCH (BODY[] {4194304}\r\n").await?;
                conn.write_all(&vec![b'x'; PARTIAL]).await?;
                return Ok(());
            }
            "LOGOUT" => {
                conn.write_all(format!("* BYE bye\r\n{tag} OK LOGOUT completed.\r\n").as_bytes())
                    .await?;
                return Ok(());
            }
            _ => {
                conn.write_all(format!("{tag} OK done\r\n").as_bytes())
                    .await?
            }
        }
    }
    Ok(())
}

/// A client of the faulty listener (1) logs in and gets a tagged NO (or a
/// BYE and the end of the connection); then the healthy listener serves.
async fn upstream_fault(rig: &Rig, baseline: usize) -> String {
    let mut c = TestClient::connect(rig.addr(1)).await;
    let greeting = c.read_line_str().await;
    assert!(greeting.starts_with("* OK "), "{greeting}");
    c.send(format!("u1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    let line = c.read_line_str().await;
    if line.starts_with("u1 NO ") {
        c.send(b"u2 LOGOUT\r\n").await;
        c.read_to_end().await;
    } else {
        assert!(line.starts_with("* BYE "), "{line}");
        c.read_to_end().await;
    }
    drop(c);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    rig.next_client_logs_in().await;
    line
}

async fn scripted_rig(script: Script) -> (Rig, AbortOnDrop, usize) {
    let pki = TestPki::new();
    let (addr, server) = scripted_imap(&pki, script).await;
    let rig = rig_with(
        pki,
        RigOptions {
            faulty: Some(imap(addr)),
            ..RigOptions::default()
        },
    )
    .await;
    let baseline = rig.warm_up().await;
    (rig, server, baseline)
}

#[tokio::test]
async fn upstream_refusing_tcp_is_unavailable() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions {
        faulty: Some(imap(dead_addr().await)),
        ..RigOptions::default()
    })
    .await;
    let baseline = rig.warm_up().await;
    let line = upstream_fault(&rig, baseline).await;
    unavailable(&line, "u1");
}

#[tokio::test]
async fn upstream_tls_handshake_failure_is_unavailable() {
    let _serial = SERIAL.lock().await;
    let (rig, _server, baseline) = scripted_rig(Script::NotTls).await;
    let line = upstream_fault(&rig, baseline).await;
    unavailable(&line, "u1");
}

#[tokio::test]
async fn upstream_certificates_for_another_name_or_from_an_unknown_ca_are_refused() {
    let _serial = SERIAL.lock().await;
    for wrong in ["name", "issuer"] {
        let pki = TestPki::new();
        let config = match wrong {
            "name" => pki.server_config_for(&["elsewhere.example"]),
            _ => pki.untrusted_server_config(),
        };
        let tokens = Arc::new(TokenState::new());
        let server = FakeImapServer::start_with_config(config, tokens, ImapOpts::default()).await;
        let rig = rig_with(
            pki,
            RigOptions {
                faulty: Some(imap(server.addr)),
                ..RigOptions::default()
            },
        )
        .await;
        let baseline = rig.warm_up().await;
        let line = upstream_fault(&rig, baseline).await;
        unavailable(&line, "u1");
        assert_eq!(server.state.auth_attempts(), 0, "{wrong}");
    }
}

#[tokio::test]
async fn upstream_closing_during_the_greeting_is_unavailable() {
    let _serial = SERIAL.lock().await;
    for script in [Script::CloseBeforeGreeting, Script::HalfGreeting] {
        let (rig, _server, baseline) = scripted_rig(script).await;
        let line = upstream_fault(&rig, baseline).await;
        unavailable(&line, "u1");
    }
}

#[tokio::test]
async fn upstream_closing_during_authentication_is_unavailable() {
    let _serial = SERIAL.lock().await;
    let (rig, _server, baseline) = scripted_rig(Script::CloseAtAuth).await;
    let line = upstream_fault(&rig, baseline).await;
    unavailable(&line, "u1");
}

#[tokio::test]
async fn upstream_throttling_is_passed_on() {
    let _serial = SERIAL.lock().await;
    let (rig, _server, baseline) = scripted_rig(Script::Throttled).await;
    let line = upstream_fault(&rig, baseline).await;
    assert_eq!(line, format!("u1 {THROTTLED}"));
}

#[tokio::test]
async fn upstream_closing_mid_transfer_ends_the_client_connection() {
    let _serial = SERIAL.lock().await;
    let (rig, _server, baseline) = scripted_rig(Script::CloseMidFetch).await;
    let mut c = imap_client(rig.addr(1)).await;
    c.send(format!("u1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect(b"u1 OK AUTHENTICATE completed.").await;
    c.send(b"u2 FETCH 1 BODY[]\r\n").await;
    c.expect(b"* 1 FETCH (BODY[] {4194304}").await;
    let rest = c.read_to_end().await;
    assert_eq!(rest.len(), PARTIAL);
    drop(c);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    rig.next_client_logs_in().await;
}

#[tokio::test]
async fn smtp_concurrency_limit_is_passed_on() {
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new();
    let tokens = Arc::new(TokenState::new());
    let server = FakeSmtpServer::start(
        &pki,
        tokens,
        SmtpOpts {
            auth_reply: SmtpAuthReply::ThreadLimit,
            ..SmtpOpts::default()
        },
    )
    .await;
    let rig = rig_with(
        pki,
        RigOptions {
            faulty: Some(smtp(server.addr)),
            ..RigOptions::default()
        },
    )
    .await;
    let baseline = rig.warm_up().await;
    let mut c = TestClient::connect(rig.addr(1)).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO client.example\r\n").await;
    c.expect_smtp(250).await;
    let plain = B64.encode(format!("\0{USER}\0{PASSWORD}"));
    c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await;
    c.expect(smtp_server::THREAD_LIMIT.as_bytes()).await;
    c.send(b"QUIT\r\n").await;
    c.expect_smtp(221).await;
    c.read_to_end().await;
    drop(c);
    server
        .state
        .wait_until("SMTP upstream closed", |s| s.active_connections() == 0)
        .await;
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    rig.next_client_logs_in().await;
}

#[tokio::test]
async fn pop3_err_from_upstream_is_passed_on() {
    let _serial = SERIAL.lock().await;
    let pki = TestPki::new();
    let tokens = Arc::new(TokenState::new());
    // The upstream takes tokens for another mailbox only: every XOAUTH2 gets -ERR.
    let server = FakePop3Server::start(
        &pki,
        tokens,
        Pop3Opts {
            user: "someone-else@example.test".to_owned(),
            ..Pop3Opts::default()
        },
    )
    .await;
    let rig = rig_with(
        pki,
        RigOptions {
            faulty: Some(pop3(server.addr)),
            ..RigOptions::default()
        },
    )
    .await;
    let baseline = rig.warm_up().await;
    let mut c = TestClient::connect(rig.addr(1)).await;
    c.expect_prefix(b"+OK").await;
    c.send(format!("USER {USER}\r\n").as_bytes()).await;
    c.expect_prefix(b"+OK").await;
    c.send(format!("PASS {PASSWORD}\r\n").as_bytes()).await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("-ERR "), "{line}");
    assert!(!line.contains(PASSWORD), "{line}");
    c.send(b"QUIT\r\n").await;
    c.expect_prefix(b"+OK").await;
    c.read_to_end().await;
    drop(c);
    server
        .state
        .wait_until("POP3 upstream closed", |s| s.active_connections() == 0)
        .await;
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    rig.next_client_logs_in().await;
}

// ---------------------------------------------------------------------------
// Client faults.

#[tokio::test]
async fn clients_that_vanish_during_authentication_lose_nothing() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions::default()).await;
    let baseline = rig.warm_up().await;

    // Gone after the PLAIN continuation.
    let mut c = imap_client(rig.addr(0)).await;
    c.send(b"a1 AUTHENTICATE PLAIN\r\n").await;
    c.expect(b"+ ").await;
    drop(c);

    // Gone while the proxy refreshes the token for its LOGIN.
    rig.running.context.gate.tokens().discard_access_token(USER);
    rig.token_state.set_delay(Duration::from_millis(500));
    let refreshes = rig.token_state.requests(GRANT_REFRESH);
    let mut c = imap_client(rig.addr(0)).await;
    c.send(format!("a1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    // Gone once the refresh is under way.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rig.token_state.in_flight() == 0 {
        assert!(Instant::now() < deadline, "the LOGIN started no refresh");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(c);
    assert!(
        rig.running
            .context
            .gate
            .tokens()
            .wait_idle(Duration::from_secs(10))
            .await
    );
    rig.token_state.set_delay(Duration::ZERO);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;

    // The refresh finished and was kept: the next login needs no other.
    rig.next_client_logs_in().await;
    assert_eq!(rig.token_state.requests(GRANT_REFRESH), refreshes + 1);
}

#[tokio::test]
async fn a_line_over_the_cap_is_refused_and_closed() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions::default()).await;
    let baseline = rig.warm_up().await;
    let mut c = imap_client(rig.addr(0)).await;
    c.send(&vec![b'a'; 9000]).await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("* BYE [TOOBIG] "), "{line}");
    c.expect_eof().await;
    drop(c);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    rig.next_client_logs_in().await;
}

#[tokio::test]
async fn literals_bigger_than_announced_or_allowed_are_refused() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions::default()).await;
    let baseline = rig.warm_up().await;
    let mut c = imap_client(rig.addr(0)).await;
    // More bytes than the literal announced: the rest is not a password.
    c.send(b"a1 LOGIN {5}\r\n").await;
    c.expect_prefix(b"+ ").await;
    c.send(format!("{USER} {PASSWORD}\r\n").as_bytes()).await;
    let line = tagged_line(&mut c, "a1").await;
    assert!(line.starts_with("a1 BAD "), "{line}");
    assert!(!line.contains(PASSWORD), "{line}");
    // A literal over the cap gets no continuation, just a refusal.
    c.send(b"a2 LOGIN {100000}\r\n").await;
    let line = tagged_line(&mut c, "a2").await;
    assert!(line.starts_with("a2 BAD [TOOBIG] "), "{line}");
    // And the connection still logs in.
    c.send(format!("a3 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    let line = tagged_line(&mut c, "a3").await;
    assert!(line.starts_with("a3 OK "), "{line}");
    noop_and_logout(&mut c).await;
    drop(c);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
}

#[tokio::test]
async fn a_client_trickling_bytes_is_closed_at_the_preauth_deadline() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions {
        proxy_extra: "preauth_timeout_secs = 3",
        ..RigOptions::default()
    })
    .await;
    let baseline = rig.warm_up().await;
    let started = Instant::now();
    let tcp = TcpStream::connect(rig.addr(0)).await.expect("connect");
    let (mut read, mut write) = tcp.into_split();
    let trickle = tokio::spawn(async move {
        for byte in b"a1 LOGIN user@example.test hunter2\r\n" {
            if write.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut seen = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), read.read_to_end(&mut seen))
        .await
        .expect("closed within 10 s")
        .expect("read");
    let elapsed = started.elapsed();
    trickle.abort();
    let _ = trickle.await;
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("* OK "), "{text}");
    assert!(
        text.ends_with("* BYE Autologout: no login in time\r\n"),
        "{text}"
    );
    assert!(
        elapsed >= Duration::from_millis(2900) && elapsed < Duration::from_secs(6),
        "{elapsed:?}"
    );
    drop(read);
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    assert_eq!(rig.healthy.state.auth_attempts(), 1, "only the warm-up");
    rig.next_client_logs_in().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_their_places_given_back() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions {
        proxy_extra: "max_connections = 3",
        ..RigOptions::default()
    })
    .await;
    let baseline = rig.warm_up().await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(imap_client(rig.addr(0)).await);
    }
    let mut refused = TestClient::connect(rig.addr(0)).await;
    refused
        .expect(b"* BYE [UNAVAILABLE] Too many connections to xoauth2-proxy; try again later")
        .await;
    refused.expect_eof().await;
    drop(refused);
    for mut c in open {
        logout(&mut c).await;
    }
    rig.upstreams_closed().await;
    no_leaked_fds(baseline).await;
    rig.next_client_logs_in().await;
}

// ---------------------------------------------------------------------------
// A disk that refuses the token write.

#[cfg(unix)]
/// Makes `dir` refuse new files until dropped: mode 0555, and for root (who
/// ignores modes) the immutable attribute. `None` where neither works.
struct ReadOnly {
    dir: std::path::PathBuf,
    immutable: bool,
}

#[cfg(unix)]
impl ReadOnly {
    fn new(dir: &Path) -> Option<ReadOnly> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).ok()?;
        let mut guard = ReadOnly {
            dir: dir.to_owned(),
            immutable: false,
        };
        if guard.writable() {
            guard.immutable = std::process::Command::new("chattr")
                .arg("+i")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if guard.writable() {
                return None;
            }
        }
        Some(guard)
    }

    fn writable(&self) -> bool {
        let probe = self.dir.join(".probe");
        let ok = std::fs::write(&probe, b"x").is_ok();
        let _ = std::fs::remove_file(&probe);
        ok
    }
}

#[cfg(unix)]
impl Drop for ReadOnly {
    fn drop(&mut self) {
        use std::os::unix::fs::PermissionsExt;
        if self.immutable {
            let _ = std::process::Command::new("chattr")
                .arg("-i")
                .arg(&self.dir)
                .status();
        }
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
    }
}

/// Unix only: read-only directories by mode (and `chattr`).
#[cfg(unix)]
#[tokio::test]
async fn a_read_only_state_dir_is_reported_and_the_old_tokens_stay_usable() {
    let _serial = SERIAL.lock().await;
    let rig = rig(RigOptions::default()).await;
    let tokens_dir = TokenStore::new(rig.state_dir.path()).dir().to_owned();
    capability_warm_up(&rig).await;
    // Tokens are sealed at sign-in: the first login opens them, writes
    // only the rotated refresh token.
    rig.next_client_logs_in().await;
    let sealed = rig.token_file();

    // A refresh whose result cannot be written still serves the client, and
    // the tokens on disk stay the ones that open with the password.
    {
        let Some(_read_only) = ReadOnly::new(&tokens_dir) else {
            eprintln!("skipped: this system cannot make a directory read-only");
            return;
        };
        rig.running.context.gate.tokens().discard_access_token(USER);
        rig.next_client_logs_in().await;
        assert_eq!(rig.token_file(), sealed);
    }
    let latest = rig.token_state.latest_refresh_token().expect("rotated");
    assert!(rig.token_state.is_valid_refresh_token(&latest));
}
