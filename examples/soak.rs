//! A bounded soak of the release proxy: a few hundred clients log in, move a
//! message and log out in a loop, over IMAP, POP3 and SMTP, through the real
//! `xoauth2-proxy` binary (a child process, so its descriptors and memory are
//! its own) against the in-process fakes of `tests/support`. Access tokens
//! live seconds, so the proxy refreshes (and rotates the refresh token, and
//! re-seals it) every few seconds under load.
//!
//! ```sh
//! cargo build --release
//! cargo run --release --example soak -- --proxy target/release/xoauth2-proxy \
//!     --clients 300 --seconds 180
//! ```
//!
//! Checks, printed as a table (exit status 1 if any fails): every message
//! arrived byte for byte and no session failed; the token endpoint saw a
//! refresh every few seconds; the proxy's open descriptors and RSS after the
//! run are back near what they were after a warm-up round; the proxy still
//! serves a fresh login, exits on SIGTERM, and leaves a token store that
//! opens with the password and holds the endpoint's latest refresh token.

#[path = "../tests/support/mod.rs"]
mod support;

#[path = "../tests/harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Parser;
use secrecy::ExposeSecret as _;
use tokio::net::TcpStream;
use xoauth2_proxy::auth::password::SealKey;
use xoauth2_proxy::auth::vault::{Entry, TokenStore};

use harness::{PASSWORD, seed_tokens};
use support::conn::{LineConn, literal_suffix};
use support::token_server::GRANT_REFRESH;
use support::{
    FakeImapServer, FakePop3Server, FakeSmtpServer, FakeTokenServer, ImapOpts, ImapState, Pop3Opts,
    SmtpOpts, SmtpState, TestPki, USER, dot_stuff,
};

/// `expires_in` of the access tokens the fake endpoint issues...
const TOKEN_LIFETIME_SECS: u64 = 10;
/// ...and the proxy's `refresh_margin_secs`: a token is used for at most
/// `TOKEN_LIFETIME_SECS - REFRESH_MARGIN_SECS` (6 s) before a login refreshes
/// it, and the background refresher renews it a little earlier (about every
/// 4 s). The margin is also the time a login on a loaded machine has to
/// present the token upstream before the fake finds it expired.
const REFRESH_MARGIN_SECS: u64 = 4;
/// The longest a token is used while clients keep logging in.
const REFRESH_EVERY_SECS: u64 = TOKEN_LIFETIME_SECS - REFRESH_MARGIN_SECS;
/// Descriptors the proxy may hold at the end beyond its count after the
/// warm-up: reqwest keeps idle keep-alive connections to the token endpoint
/// (for up to 90 s, one or two depending on how refreshes overlapped), and a
/// session's sockets may still be in the middle of closing when the count
/// settles. A leak of one descriptor per session would be thousands.
const FD_SLACK: usize = 8;
/// The end RSS may be this many times the RSS after the warm-up round, plus
/// [`RSS_SLACK_KIB`]. The warm-up already had every client in a session at
/// once, so the allocator has grown its arenas to the working set; memory
/// freed since is mostly kept by the allocator (glibc rarely trims its
/// per-thread arenas), and which arena a session's buffers land in varies,
/// so the end figure drifts a little above the warm-up one without any leak
/// (a full run measured 22 MiB after the warm-up, 26 MiB at the end, 40 MiB
/// at the peak). A full soak runs 40 000 sessions or more (137 000 on a
/// quiet machine): a leak of 512 bytes per session would exceed the bound.
const RSS_FACTOR: f64 = 1.25;
const RSS_SLACK_KIB: u64 = 16 * 1024;
/// Any single read or write of a client; generous, as the machine may be
/// busy with other work. A hang shows up as a failure with what was awaited.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the proxy may take to listen, to settle its descriptors, and to
/// exit after SIGTERM (its `shutdown_grace_secs` is set below this).
const START_TIMEOUT: Duration = Duration::from_secs(30);
const SETTLE_MAX: Duration = Duration::from_secs(30);
/// The fd count is settled once it has not fallen for this long.
const SETTLE_QUIET: Duration = Duration::from_secs(2);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const SHUTDOWN_GRACE_SECS: u64 = 5;
/// Message sizes, drawn log-uniformly (as many 4-8 KiB messages as 512 KiB-1 MiB ones).
const MIN_MESSAGE: usize = 4 * 1024;
const MAX_MESSAGE: usize = 1024 * 1024;
/// Messages in the fake IMAP mailbox and the fake POP3 maildrop. The POP3
/// fake copies its maildrop into every session, so that one stays small.
const IMAP_MESSAGES: usize = 24;
const POP3_MESSAGES: usize = 6;
/// Failures printed in full (all are counted by kind).
const FAILURES_SHOWN: usize = 10;
/// Progress line interval.
const PROGRESS_EVERY: Duration = Duration::from_secs(30);
const MAX_LINE: usize = 64 * 1024;

#[derive(Parser)]
#[command(about = "A bounded soak of the xoauth2-proxy binary against the test fakes")]
struct Args {
    /// The proxy binary to run (the release build).
    #[arg(long)]
    proxy: PathBuf,
    /// Concurrent clients.
    #[arg(long, default_value_t = 300)]
    clients: usize,
    /// How long the clients loop after the warm-up round.
    #[arg(long, default_value_t = 180)]
    seconds: u64,
    /// Seed of the clients' choices and message contents (reproducible runs).
    #[arg(long, default_value_t = 0x50A4)]
    seed: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => println!("\nsoak passed"),
        Ok(false) => {
            println!("\nsoak FAILED");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("soak: {e:#}");
            std::process::exit(2);
        }
    }
}

// ---- what a client does ----

#[derive(Clone, Copy, Debug)]
enum Kind {
    ImapFetch,
    ImapAppend,
    Pop3Retr,
    SmtpData,
}

impl Kind {
    const ALL: [Kind; 4] = [
        Kind::ImapFetch,
        Kind::ImapAppend,
        Kind::Pop3Retr,
        Kind::SmtpData,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::ImapFetch => "IMAP FETCH",
            Kind::ImapAppend => "IMAP APPEND",
            Kind::Pop3Retr => "POP3 RETR",
            Kind::SmtpData => "SMTP DATA",
        }
    }
}

/// SplitMix64: small, deterministic, good enough to pick sizes and protocols.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A message size between [`MIN_MESSAGE`] and [`MAX_MESSAGE`], log-uniform.
    fn size(&mut self) -> usize {
        let u = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        let ratio = MAX_MESSAGE as f64 / MIN_MESSAGE as f64;
        ((MIN_MESSAGE as f64 * ratio.powf(u)) as usize).clamp(MIN_MESSAGE, MAX_MESSAGE)
    }
}

/// Why a session failed: a wrong byte (`mismatch`) or anything else.
struct Failure {
    mismatch: bool,
    kind: &'static str,
    detail: String,
}

fn fail(kind: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        mismatch: false,
        kind,
        detail: detail.into(),
    }
}

fn mismatch(kind: &'static str, detail: impl Into<String>) -> Failure {
    Failure {
        mismatch: true,
        kind,
        detail: detail.into(),
    }
}

/// A received line for a message: escaped, cut short. Only server replies
/// are shown, never what a client sent (its password).
fn shown(line: &[u8]) -> String {
    let text = line.escape_ascii().to_string();
    if text.len() > 120 {
        format!("{}…", &text[..120])
    } else {
        text
    }
}

/// Where two byte strings first differ, for a mismatch message.
fn diff(what: &str, got: &[u8], want: &[u8]) -> String {
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    format!(
        "{what}: {} bytes, expected {}, first difference at byte {at}",
        got.len(),
        want.len()
    )
}

type Res<T> = Result<T, Failure>;

/// A client connection; every step is bounded by [`STEP_TIMEOUT`].
struct Client {
    conn: LineConn,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Res<Client> {
        let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| fail("connect", format!("no connection to {addr} in time")))?
            .map_err(|e| fail("connect", format!("connect to {addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        Ok(Client {
            conn: LineConn::plain(tcp),
        })
    }

    async fn send(&mut self, data: &[u8]) -> Res<()> {
        tokio::time::timeout(STEP_TIMEOUT, self.conn.write_all(data))
            .await
            .map_err(|_| fail("timeout", format!("writing {} bytes", data.len())))?
            .map_err(|e| fail("io", format!("write: {e}")))
    }

    async fn send_line(&mut self, line: &str) -> Res<()> {
        self.send(format!("{line}\r\n").as_bytes()).await
    }

    async fn line(&mut self, waiting_for: &str) -> Res<Vec<u8>> {
        match tokio::time::timeout(STEP_TIMEOUT, self.conn.read_line(MAX_LINE)).await {
            Err(_) => Err(fail("timeout", format!("waiting for {waiting_for}"))),
            Ok(Err(e)) => Err(fail("io", format!("reading {waiting_for}: {e}"))),
            Ok(Ok(None)) => Err(fail(
                "closed early",
                format!("connection closed while waiting for {waiting_for}"),
            )),
            Ok(Ok(Some(line))) => Ok(line),
        }
    }

    async fn expect(&mut self, prefix: &str) -> Res<Vec<u8>> {
        let line = self.line(prefix).await?;
        if line.starts_with(prefix.as_bytes()) {
            Ok(line)
        } else {
            Err(fail(
                "unexpected reply",
                format!("expected {prefix:?}, got \"{}\"", shown(&line)),
            ))
        }
    }

    async fn exact(&mut self, n: usize) -> Res<Vec<u8>> {
        tokio::time::timeout(STEP_TIMEOUT, self.conn.read_exact(n))
            .await
            .map_err(|_| fail("timeout", format!("waiting for {n} bytes")))?
            .map_err(|e| fail("io", format!("reading {n} bytes: {e}")))
    }

    /// IMAP: lines up to the one tagged `tag`, which must be OK.
    async fn tagged_ok(&mut self, tag: &str) -> Res<()> {
        let prefix = format!("{tag} ");
        for _ in 0..100 {
            let line = self.line(&format!("the reply tagged {tag}")).await?;
            if line.starts_with(prefix.as_bytes()) {
                if line.starts_with(format!("{tag} OK").as_bytes()) {
                    return Ok(());
                }
                return Err(fail(
                    "refused",
                    format!("{tag} answered \"{}\"", shown(&line)),
                ));
            }
        }
        Err(fail("unexpected reply", format!("no reply tagged {tag}")))
    }

    /// SMTP: one reply (all its lines), which must have `code`.
    async fn smtp(&mut self, code: &str) -> Res<()> {
        for _ in 0..100 {
            let line = self.line(&format!("an SMTP {code} reply")).await?;
            if !line.starts_with(code.as_bytes()) {
                return Err(fail(
                    "refused",
                    format!("expected {code}, got \"{}\"", shown(&line)),
                ));
            }
            if line.get(3) != Some(&b'-') {
                return Ok(());
            }
        }
        Err(fail("unexpected reply", "an endless SMTP reply"))
    }

    /// After the goodbye the proxy must close the connection, sending nothing more.
    async fn expect_close(&mut self) -> Res<()> {
        match tokio::time::timeout(STEP_TIMEOUT, self.conn.read_line(MAX_LINE)).await {
            Err(_) => Err(fail(
                "not closed",
                "the connection stayed open after the goodbye",
            )),
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some(line))) => Err(fail(
                "unexpected reply",
                format!("after the goodbye: \"{}\"", shown(&line)),
            )),
            Ok(Err(e)) => Err(fail("io", format!("after the goodbye: {e}"))),
        }
    }
}

fn plain_response() -> String {
    B64.encode(format!("\0{USER}\0{PASSWORD}"))
}

/// What the clients talk to and check against.
struct Shared {
    imap: SocketAddr,
    pop3: SocketAddr,
    smtp: SocketAddr,
    imap_state: Arc<ImapState>,
    smtp_state: Arc<SmtpState>,
    imap_messages: Vec<Vec<u8>>,
    /// The POP3 maildrop as it goes over the wire (dot-stuffed, with the terminator).
    pop3_stuffed: Vec<Vec<u8>>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    sessions: [AtomicU64; 4],
    logins: AtomicU64,
    bytes_down: AtomicU64,
    bytes_up: AtomicU64,
    mismatches: AtomicU64,
    failures: AtomicU64,
    by_kind: Mutex<BTreeMap<&'static str, u64>>,
    first: Mutex<Vec<String>>,
}

impl Stats {
    fn record(&self, what: Kind, tag: &str, f: Failure) {
        if f.mismatch {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
        }
        self.failures.fetch_add(1, Ordering::Relaxed);
        *lock(&self.by_kind).entry(f.kind).or_default() += 1;
        let mut first = lock(&self.first);
        if first.len() < FAILURES_SHOWN {
            first.push(format!(
                "{} session {tag}: {}: {}",
                what.name(),
                f.kind,
                f.detail
            ));
        }
    }

    fn sessions(&self) -> u64 {
        self.sessions
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .sum()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One session of `kind`: connect, log in with the password, move a message
/// and check it, log out, see the connection close.
async fn session(sh: &Shared, kind: Kind, rng: &mut Rng, tag: &str) -> Res<()> {
    match kind {
        Kind::ImapFetch | Kind::ImapAppend => imap_session(sh, kind, rng, tag).await,
        Kind::Pop3Retr => pop3_session(sh, rng).await,
        Kind::SmtpData => smtp_session(sh, rng, tag).await,
    }
}

async fn imap_session(sh: &Shared, kind: Kind, rng: &mut Rng, tag: &str) -> Res<()> {
    let mut c = Client::connect(sh.imap).await?;
    c.expect("* OK").await?;
    if rng.below(2) == 0 {
        c.send_line(&format!("a1 LOGIN \"{USER}\" \"{PASSWORD}\""))
            .await?;
    } else {
        c.send_line(&format!("a1 AUTHENTICATE PLAIN {}", plain_response()))
            .await?;
    }
    c.tagged_ok("a1").await.map_err(login_failure)?;
    sh.stats.logins.fetch_add(1, Ordering::Relaxed);
    c.send_line("a2 SELECT INBOX").await?;
    c.tagged_ok("a2").await?;
    if let Kind::ImapFetch = kind {
        let n = rng.below(sh.imap_messages.len()) + 1;
        let want = &sh.imap_messages[n - 1];
        c.send_line(&format!("a3 FETCH {n} BODY[]")).await?;
        let head = c.expect(&format!("* {n} FETCH (BODY[] {{")).await?;
        let Some((len, _)) = literal_suffix(&head) else {
            return Err(fail(
                "unexpected reply",
                format!("no literal in \"{}\"", shown(&head)),
            ));
        };
        if len != want.len() {
            return Err(mismatch(
                "mismatch",
                format!("FETCH {n}: literal of {len} bytes, expected {}", want.len()),
            ));
        }
        let got = c.exact(len).await?;
        if got != *want {
            return Err(mismatch(
                "mismatch",
                diff(&format!("FETCH {n}"), &got, want),
            ));
        }
        let close = c.line("the end of the FETCH response").await?;
        if close != b")\r\n" {
            return Err(mismatch(
                "mismatch",
                format!("FETCH {n}: \"{}\" after the literal", shown(&close)),
            ));
        }
        c.tagged_ok("a3").await?;
        sh.stats.bytes_down.fetch_add(len as u64, Ordering::Relaxed);
    } else {
        let size = rng.size();
        let body = support::message(size, rng.next());
        let mailbox = format!("soak/{tag}");
        c.send_line(&format!("a3 APPEND \"{mailbox}\" {{{size}}}"))
            .await?;
        c.expect("+").await?;
        let mut data = body.clone();
        data.extend_from_slice(b"\r\n");
        c.send(&data).await?;
        c.tagged_ok("a3").await?;
        match sh.imap_state.take_appended_to(&mailbox) {
            None => {
                return Err(mismatch(
                    "mismatch",
                    "APPEND answered OK but the server has no such message",
                ));
            }
            Some(got) if got != body => {
                return Err(mismatch("mismatch", diff("APPEND", &got, &body)));
            }
            Some(_) => {}
        }
        sh.stats.bytes_up.fetch_add(size as u64, Ordering::Relaxed);
    }
    c.send_line("a4 LOGOUT").await?;
    c.expect("* BYE").await?;
    c.tagged_ok("a4").await?;
    c.expect_close().await
}

async fn pop3_session(sh: &Shared, rng: &mut Rng) -> Res<()> {
    let mut c = Client::connect(sh.pop3).await?;
    c.expect("+OK").await?;
    if rng.below(2) == 0 {
        c.send_line(&format!("USER {USER}")).await?;
        c.expect("+OK").await?;
        c.send_line(&format!("PASS {PASSWORD}")).await?;
    } else {
        c.send_line(&format!("AUTH PLAIN {}", plain_response()))
            .await?;
    }
    c.expect("+OK").await.map_err(login_failure)?;
    sh.stats.logins.fetch_add(1, Ordering::Relaxed);
    let n = rng.below(sh.pop3_stuffed.len()) + 1;
    let want = &sh.pop3_stuffed[n - 1];
    c.send_line(&format!("RETR {n}")).await?;
    c.expect("+OK").await?;
    // The dot-stuffed block exactly as it came over the wire.
    let mut got = Vec::with_capacity(want.len());
    loop {
        let line = c.line("the rest of a RETR").await?;
        got.extend_from_slice(&line);
        if line == b".\r\n" {
            break;
        }
        if got.len() > want.len() {
            return Err(mismatch(
                "mismatch",
                format!(
                    "RETR {n}: more than the {} bytes expected without the end",
                    want.len()
                ),
            ));
        }
    }
    if got != *want {
        return Err(mismatch("mismatch", diff(&format!("RETR {n}"), &got, want)));
    }
    sh.stats
        .bytes_down
        .fetch_add(want.len() as u64, Ordering::Relaxed);
    c.send_line("QUIT").await?;
    c.expect("+OK").await?;
    c.expect_close().await
}

async fn smtp_session(sh: &Shared, rng: &mut Rng, tag: &str) -> Res<()> {
    let mut c = Client::connect(sh.smtp).await?;
    c.smtp("220").await?;
    c.send_line("EHLO soak.example").await?;
    c.smtp("250").await?;
    if rng.below(2) == 0 {
        c.send_line(&format!("AUTH PLAIN {}", plain_response()))
            .await?;
    } else {
        c.send_line("AUTH LOGIN").await?;
        c.expect("334 ").await?;
        c.send_line(&B64.encode(USER)).await?;
        c.expect("334 ").await?;
        c.send_line(&B64.encode(PASSWORD)).await?;
    }
    c.smtp("235").await.map_err(login_failure)?;
    sh.stats.logins.fetch_add(1, Ordering::Relaxed);
    let size = rng.size();
    let body = support::message(size, rng.next());
    let rcpt = format!("soak-{tag}@example.test");
    c.send_line(&format!("MAIL FROM:<{USER}>")).await?;
    c.smtp("250").await?;
    c.send_line(&format!("RCPT TO:<{rcpt}>")).await?;
    c.smtp("250").await?;
    c.send_line("DATA").await?;
    c.smtp("354").await?;
    c.send(&dot_stuff(&body)).await?;
    c.smtp("250").await?;
    match sh.smtp_state.take_received_to(&rcpt) {
        None => {
            return Err(mismatch(
                "mismatch",
                "DATA answered 250 but the server has no such message",
            ));
        }
        Some(got) if got.body != body => {
            return Err(mismatch("mismatch", diff("DATA", &got.body, &body)));
        }
        Some(_) => {}
    }
    sh.stats.bytes_up.fetch_add(size as u64, Ordering::Relaxed);
    c.send_line("QUIT").await?;
    c.smtp("221").await?;
    c.expect_close().await
}

fn login_failure(mut f: Failure) -> Failure {
    if f.kind == "refused" || f.kind == "unexpected reply" {
        f.kind = "login refused";
    }
    f
}

/// A client: one session (`until` is `None`: the warm-up), or sessions in a
/// loop until `until`.
async fn client(
    sh: Arc<Shared>,
    id: usize,
    seed: u64,
    phase: &'static str,
    until: Option<Instant>,
) {
    let mut rng = Rng::new(seed ^ (id as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    for n in 0.. {
        let kind = Kind::ALL[rng.below(Kind::ALL.len())];
        let tag = format!("c{id}-{phase}{n}");
        match session(&sh, kind, &mut rng, &tag).await {
            Ok(()) => {
                sh.stats.sessions[kind as usize].fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => sh.stats.record(kind, &tag, f),
        }
        if until.is_none_or(|u| Instant::now() >= u) {
            break;
        }
    }
}

async fn round(
    sh: &Arc<Shared>,
    clients: usize,
    seed: u64,
    phase: &'static str,
    until: Option<Instant>,
) {
    let tasks: Vec<_> = (0..clients)
        .map(|id| tokio::spawn(client(sh.clone(), id, seed, phase, until)))
        .collect();
    for task in tasks {
        if let Err(e) = task.await {
            sh.stats.failures.fetch_add(1, Ordering::Relaxed);
            lock(&sh.stats.first).push(format!("a client task ended abnormally: {e}"));
        }
    }
}

// ---- the proxy child ----

struct ProxyChild {
    child: Child,
    log: PathBuf,
}

impl ProxyChild {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for a failure.
    fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Lines of its log at WARN or ERROR.
    fn warnings(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for ProxyChild {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn spawn_proxy(bin: &Path, config: &Path, log: &Path) -> anyhow::Result<ProxyChild> {
    let out = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let err = out.try_clone()?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(config)
        .args(["--log", "info", "run"])
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    Ok(ProxyChild {
        child,
        log: log.to_owned(),
    })
}

/// Polls until every address accepts a connection (or the proxy exits).
async fn wait_listening(proxy: &mut ProxyChild, addrs: &[SocketAddr]) -> anyhow::Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    for &addr in addrs {
        loop {
            if let Some(status) = proxy.exited() {
                bail!(
                    "the proxy exited ({status}) before listening on {addr}:\n{}",
                    proxy.log_tail(20)
                );
            }
            if TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "the proxy did not listen on {addr} within {START_TIMEOUT:?}:\n{}",
                    proxy.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

/// Free ports on 127.0.0.1 (bound, then released for the proxy to take).
fn free_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr())
        .collect::<Result<_, _>>()?)
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A `/proc/PID/status` figure in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// The proxy's fd count once it has stopped falling (sockets of ended
/// sessions closing), polled; at most [`SETTLE_MAX`].
async fn settled_fds(pid: u32) -> usize {
    let start = Instant::now();
    let mut low = fd_count(pid);
    let mut low_since = Instant::now();
    while start.elapsed() < SETTLE_MAX && low_since.elapsed() < SETTLE_QUIET {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = fd_count(pid);
        if now < low {
            low = now;
            low_since = Instant::now();
        }
    }
    fd_count(pid)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn config_text(
    pki: &TestPki,
    state_dir: &Path,
    token_url: &str,
    listeners: &[(&str, SocketAddr, SocketAddr, &str)],
) -> String {
    // Every client is 127.0.0.1: on a loopback listener `max_connections`
    // is the limit that applies (per listener); both are set far above the
    // number of clients so no login is refused for being one too many.
    let mut text = format!(
        "[proxy]\nstate_dir = {state:?}\nca_file = {ca:?}\n\
         max_connections = 4096\nmax_connections_per_source = 4096\n\
         refresh_margin_secs = {REFRESH_MARGIN_SECS}\nconnect_timeout_secs = 30\n\
         shutdown_grace_secs = {SHUTDOWN_GRACE_SECS}\n\n",
        state = state_dir.display().to_string(),
        ca = pki.ca_file.display().to_string(),
    );
    for (protocol, listen, upstream, tls) in listeners {
        let _ = write!(
            text,
            "[[listener]]\nprotocol = \"{protocol}\"\nlisten = \"{listen}\"\n\
             upstream = \"{upstream}\"\nupstream_tls = \"{tls}\"\n\n"
        );
    }
    let _ = write!(
        text,
        "[[account]]\nusername = \"{USER}\"\nprovider = \"custom\"\nclient_id = \"soak\"\n\
         token_url = \"{token_url}/token\"\ndevice_code_url = \"{token_url}/devicecode\"\n\
         scopes = [\"https://outlook.office.com/IMAP.AccessAsUser.All\", \"offline_access\"]\n"
    );
    text
}

/// Opens the account's entry the way the proxy does: sealed, with the
/// clients' password; it must hold the refresh token the endpoint issued last.
fn check_store(state_dir: &Path, latest: Option<&str>) -> Result<String, String> {
    let entry = TokenStore::new(state_dir)
        .load_entry(USER)
        .map_err(|e| format!("cannot read the entry: {e}"))?;
    let sealed = match entry {
        Some(Entry::Sealed(sealed)) => sealed,
        Some(Entry::Unsealed(_)) => return Err("the entry is not sealed".into()),
        None => return Err("no entry for the account".into()),
    };
    let key = SealKey::derive(PASSWORD.as_bytes(), sealed.params(), sealed.salt())
        .map_err(|e| format!("KDF: {e}"))?;
    let tokens = sealed
        .open(&key)
        .map_err(|e| format!("does not open: {e}"))?;
    let Some(refresh) = tokens.refresh_token else {
        return Err("opens, but holds no refresh token".into());
    };
    if Some(refresh.expose_secret()) != latest {
        return Err("opens, but its refresh token is not the endpoint's latest".into());
    }
    Ok("opens with the password; holds the latest refresh token".into())
}

struct Table {
    rows: Vec<[String; 4]>,
    passed: bool,
}

impl Table {
    fn row(&mut self, check: &str, value: String, bound: String, ok: bool) {
        self.passed &= ok;
        self.rows.push([
            check.to_owned(),
            value,
            bound,
            if ok { "PASS" } else { "FAIL" }.to_owned(),
        ]);
    }

    fn print(&self) {
        let head = ["check", "value", "bound", "result"].map(str::to_owned);
        let mut widths = [0usize; 4];
        for row in std::iter::once(&head).chain(&self.rows) {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |row: &[String; 4]| {
            let mut out = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                let pad = w - cell.chars().count();
                out.push_str(cell);
                if i < 3 {
                    out.push_str(&" ".repeat(pad + 2));
                }
            }
            println!("{out}");
        };
        line(&head);
        println!("{}", "-".repeat(widths.iter().sum::<usize>() + 6));
        for row in &self.rows {
            line(row);
        }
    }
}

// ---- the run ----

async fn run(args: Args) -> anyhow::Result<bool> {
    let started = Instant::now();
    anyhow::ensure!(args.clients > 0, "--clients must be at least 1");
    let proxy_bin = std::fs::canonicalize(&args.proxy)
        .with_context(|| format!("the proxy binary {}", args.proxy.display()))?;

    // The fakes, with seeded messages.
    let mut seeded = Rng::new(args.seed);
    let imap_messages: Vec<Vec<u8>> = (0..IMAP_MESSAGES)
        .map(|_| support::message(seeded.size(), seeded.next()))
        .collect();
    let pop3_messages: Vec<Vec<u8>> = (0..POP3_MESSAGES)
        .map(|_| support::message(seeded.size(), seeded.next()))
        .collect();
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    tokens.state.set_access_token_lifetime(TOKEN_LIFETIME_SECS);
    // Rotating refresh tokens (the fake's default): a refresh token works once.
    tokens.state.set_single_use_refresh_tokens(true);
    let imap = FakeImapServer::start(
        &pki,
        tokens.state.clone(),
        ImapOpts {
            messages: imap_messages.clone(),
            ..ImapOpts::default()
        },
    )
    .await;
    let pop3 = FakePop3Server::start(
        &pki,
        tokens.state.clone(),
        Pop3Opts {
            messages: pop3_messages.clone(),
            ..Pop3Opts::default()
        },
    )
    .await;
    let smtp = FakeSmtpServer::start(&pki, tokens.state.clone(), SmtpOpts::default()).await;

    // The proxy: a signed-in account whose first login seals its tokens.
    let dir = tempfile::tempdir()?;
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir)?;
    seed_tokens(&state_dir, &tokens);
    let listen = free_addrs(3)?;
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        config_text(
            &pki,
            &state_dir,
            &tokens.url(),
            &[
                ("imap", listen[0], imap.addr, "implicit"),
                ("pop3", listen[1], pop3.addr, "implicit"),
                ("smtp", listen[2], smtp.addr, "starttls"),
            ],
        ),
    )?;
    let mut proxy = spawn_proxy(&proxy_bin, &config, &dir.path().join("proxy.log"))?;
    let pid = proxy.pid();
    wait_listening(&mut proxy, &listen).await?;
    println!(
        "soak: {} clients for {} s through {} (pid {pid}); access tokens live {TOKEN_LIFETIME_SECS} s, \
         refresh margin {REFRESH_MARGIN_SECS} s; messages {} KiB to {} KiB; seed {:#x}",
        args.clients,
        args.seconds,
        args.proxy.display(),
        MIN_MESSAGE / 1024,
        MAX_MESSAGE / 1024,
        args.seed,
    );

    let sh = Arc::new(Shared {
        imap: listen[0],
        pop3: listen[1],
        smtp: listen[2],
        imap_state: imap.state.clone(),
        smtp_state: smtp.state.clone(),
        imap_messages,
        pop3_stuffed: pop3_messages.iter().map(|m| dot_stuff(m)).collect(),
        stats: Stats::default(),
    });

    // Warm-up: one session per client, all at once; then the reference figures.
    let t = Instant::now();
    round(&sh, args.clients, args.seed, "w", None).await;
    let warm_fds = settled_fds(pid).await;
    let warm_rss = status_kib(pid, "VmRSS:");
    println!(
        "warm-up: {} sessions in {:.1} s; proxy fds {warm_fds}, RSS {}",
        args.clients,
        t.elapsed().as_secs_f64(),
        mib(warm_rss)
    );

    // The soak.
    let refreshes_before = tokens.state.requests(GRANT_REFRESH);
    let t = Instant::now();
    let until = t + Duration::from_secs(args.seconds);
    let progress = {
        let sh = sh.clone();
        let tokens = tokens.state.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROGRESS_EVERY).await;
                println!(
                    "  {:>4} s: {} sessions, {} failed, {:.0} MiB down, {:.0} MiB up, \
                     {} refreshes; proxy fds {}, RSS {}",
                    t.elapsed().as_secs(),
                    sh.stats.sessions(),
                    sh.stats.failures.load(Ordering::Relaxed),
                    sh.stats.bytes_down.load(Ordering::Relaxed) as f64 / 1048576.0,
                    sh.stats.bytes_up.load(Ordering::Relaxed) as f64 / 1048576.0,
                    tokens.requests(GRANT_REFRESH) - refreshes_before,
                    fd_count(pid),
                    mib(status_kib(pid, "VmRSS:")),
                );
            }
        })
    };
    round(&sh, args.clients, args.seed, "s", Some(until)).await;
    progress.abort();
    let soak_secs = t.elapsed().as_secs_f64();
    let refreshes = tokens.state.requests(GRANT_REFRESH) - refreshes_before;
    let end_fds = settled_fds(pid).await;
    let end_rss = status_kib(pid, "VmRSS:");
    let peak_rss = status_kib(pid, "VmHWM:");

    // A fresh client of every kind still gets through.
    let mut fresh_rng = Rng::new(args.seed ^ 0xF4E5);
    let mut fresh_failures = Vec::new();
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        let tag = format!("fresh{i}");
        if let Err(f) = session(&sh, kind, &mut fresh_rng, &tag).await {
            fresh_failures.push(format!("{}: {}: {}", kind.name(), f.kind, f.detail));
        }
    }

    // SIGTERM, and a clean exit in time.
    let term_at = Instant::now();
    let sent = terminate(pid);
    let mut exit = None;
    while sent && term_at.elapsed() < EXIT_TIMEOUT {
        if let Some(status) = proxy.exited() {
            exit = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exit_secs = term_at.elapsed().as_secs_f64();
    let store = check_store(&state_dir, tokens.state.latest_refresh_token().as_deref());

    // The report.
    let stats = &sh.stats;
    let sessions = stats.sessions();
    let failures = stats.failures.load(Ordering::Relaxed);
    let mismatches = stats.mismatches.load(Ordering::Relaxed);
    let down = stats.bytes_down.load(Ordering::Relaxed);
    let up = stats.bytes_up.load(Ordering::Relaxed);
    println!(
        "soak: {sessions} sessions ({}) in {soak_secs:.1} s after the warm-up; {} logins; \
         {:.1} MiB down and {:.1} MiB up verified ({:.1} MiB/s)",
        Kind::ALL
            .iter()
            .map(|k| format!(
                "{} {}",
                k.name(),
                stats.sessions[*k as usize].load(Ordering::Relaxed)
            ))
            .collect::<Vec<_>>()
            .join(", "),
        stats.logins.load(Ordering::Relaxed),
        down as f64 / 1048576.0,
        up as f64 / 1048576.0,
        (down + up) as f64 / 1048576.0 / soak_secs.max(0.001),
    );
    println!("proxy: peak RSS {}", mib(peak_rss));
    if failures > 0 {
        let by_kind = lock(&stats.by_kind);
        println!(
            "failures by kind: {}",
            by_kind
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        println!("first failures:");
        for f in lock(&stats.first).iter() {
            println!("  {f}");
        }
    }
    for f in &fresh_failures {
        println!("fresh session failed: {f}");
    }
    let warnings = proxy.warnings();
    if !warnings.is_empty() {
        println!(
            "proxy log: {} WARN/ERROR lines; the first few:",
            warnings.len()
        );
        for w in warnings.iter().take(5) {
            println!("  {w}");
        }
    }

    let mut table = Table {
        rows: Vec::new(),
        passed: true,
    };
    println!();
    table.row(
        "transfers byte-exact",
        format!("{mismatches} mismatches"),
        "0".into(),
        mismatches == 0,
    );
    table.row(
        "sessions without failure",
        format!("{failures} failed of {}", sessions + failures),
        "0 failed".into(),
        failures == 0 && sessions > 0,
    );
    let want_refreshes = args.seconds / REFRESH_EVERY_SECS / 2;
    table.row(
        "token refreshes during the soak",
        format!("{refreshes}"),
        format!(">= {want_refreshes} (every {REFRESH_EVERY_SECS} s, halved)"),
        refreshes as u64 >= want_refreshes,
    );
    table.row(
        "proxy fds: end vs warm-up",
        format!("{end_fds} (warm-up {warm_fds})"),
        format!("<= {}", warm_fds + FD_SLACK),
        end_fds <= warm_fds + FD_SLACK && end_fds > 0,
    );
    let rss_bound = (warm_rss as f64 * RSS_FACTOR) as u64 + RSS_SLACK_KIB;
    table.row(
        "proxy RSS: end vs warm-up",
        format!("{} (warm-up {})", mib(end_rss), mib(warm_rss)),
        format!("<= {}", mib(rss_bound)),
        end_rss <= rss_bound && end_rss > 0,
    );
    table.row(
        "a fresh session of each kind",
        if fresh_failures.is_empty() {
            "4 of 4 ok".into()
        } else {
            format!("{} failed", fresh_failures.len())
        },
        "all ok".into(),
        fresh_failures.is_empty(),
    );
    let (exit_text, exit_ok) = match exit {
        Some(status) if status.success() => (format!("exit 0 after {exit_secs:.1} s"), true),
        Some(status) => (format!("{status} after {exit_secs:.1} s"), false),
        None if !sent => ("SIGTERM could not be sent".into(), false),
        None => ("still running".into(), false),
    };
    table.row(
        "proxy stops on SIGTERM",
        exit_text,
        format!("exit 0 within {} s", EXIT_TIMEOUT.as_secs()),
        exit_ok,
    );
    let (store_text, store_ok) = match store {
        Ok(text) => (text, true),
        Err(text) => (text, false),
    };
    table.row(
        "token store after exit",
        store_text,
        "sealed, opens, latest refresh token".into(),
        store_ok,
    );
    table.print();
    println!("\nwall time {:.1} s", started.elapsed().as_secs_f64());
    if !table.passed {
        println!("\nproxy log, last lines:\n{}", proxy.log_tail(20));
    }
    Ok(table.passed)
}

/// SIGTERM to the proxy this program started and has not reaped.
#[cfg(unix)]
fn terminate(pid: u32) -> bool {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) == 0 }
}

/// The soak runs on Unix (CI runs it on Linux); elsewhere it cannot ask the
/// proxy to stop gracefully, and says so by reporting no exit.
#[cfg(not(unix))]
fn terminate(_pid: u32) -> bool {
    false
}
