//! The attacks on the login throttle, replayed over real sockets on
//! 127.0.0.1 against the in-process fakes:
//!
//! - lock-out from loopback: another local user's parallel wrong logins (as
//!   an unknown name and as the real account) must not lock the real user's
//!   client out;
//! - parallel guesses: 60 at once are counted as they arrive, at most
//!   `LOCKOUT_FAILURES` are judged, the rest get the temporary reply of
//!   their protocol, and the record survives a reload;
//! - catch-all exhaustion: 10,000 pipelined logins for random addresses
//!   make no entries, and a real new employee still logs in, after a
//!   reload too.
//!
//! Two sockets of this process have the same owner, so which "local user"
//! a connection is comes from an injected lookup keyed by the client's
//! loopback address (`127.0.0.x`); the OS lookup itself is tested for real
//! once here and in `net::peer_user`'s unit tests.

mod harness;
mod support;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine as _;
use secrecy::SecretString;
use tokio::task::JoinSet;
use tokio::time::Instant;

use harness::{PASSWORD, config_text, imap, pop3, seed_tokens, smtp, start};
use support::*;
use xoauth2_proxy::auth::gate::Origin;
use xoauth2_proxy::auth::throttle::{FIRST_DELAY, LOCKOUT_FAILURES};
use xoauth2_proxy::auth::vault::StoredTokens;
use xoauth2_proxy::config::Config;
use xoauth2_proxy::net::peer_user::PeerUser;
use xoauth2_proxy::sasl::Credentials;

const ALICE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const MALLORY: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 66);

/// Long enough for the throttle's delays (paused clock: free), so a
/// client never gives up before the proxy answers.
const CLIENT_WAIT: Duration = Duration::from_secs(600);

fn parse(text: &str) -> Config {
    Config::parse(text, std::path::Path::new("test.toml")).expect("test config is valid")
}

/// The local user of each client address: `127.0.0.x` is uid 1000 + x.
fn users_by_address(running: &xoauth2_proxy::Running) {
    running
        .context
        .gate
        .accounts()
        .throttle
        .identify_peers_with(|_local, peer| match peer.ip().to_canonical() {
            IpAddr::V4(ip) => Some(PeerUser::Uid(1000 + u32::from(ip.octets()[3]))),
            IpAddr::V6(_) => None,
        });
}

/// One IMAP LOGIN from `from` on a connection of its own; the tagged reply.
async fn imap_login(proxy: SocketAddr, from: Ipv4Addr, user: &str, password: &str) -> String {
    let mut c = TestClient::connect_from(proxy, from.into()).await;
    c.set_timeout(CLIENT_WAIT);
    c.expect_prefix(b"* OK").await;
    c.send(format!("a1 LOGIN {user} {password}\r\n").as_bytes())
        .await;
    let lines = c.read_until_tagged("a1").await;
    String::from_utf8_lossy(lines.last().expect("a tagged reply")).into_owned()
}

async fn pop3_login(proxy: SocketAddr, from: Ipv4Addr, password: &str) -> String {
    let mut c = TestClient::connect_from(proxy, from.into()).await;
    c.set_timeout(CLIENT_WAIT);
    c.expect(pop3_server::GREETING.as_bytes()).await;
    c.send(format!("USER {USER}\r\nPASS {password}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    c.read_line_str().await
}

async fn smtp_login(proxy: SocketAddr, from: Ipv4Addr, password: &str) -> String {
    let mut c = TestClient::connect_from(proxy, from.into()).await;
    c.set_timeout(CLIENT_WAIT);
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO client.example\r\n").await;
    c.expect_smtp(250).await;
    let ir = base64::engine::general_purpose::STANDARD.encode(format!("\0{USER}\0{password}"));
    c.send(format!("AUTH PLAIN {ir}\r\n").as_bytes()).await;
    let reply = c.read_smtp_reply().await;
    String::from_utf8_lossy(reply.last().expect("a reply")).into_owned()
}

/// How many replies start with each prefix; panics on any other reply.
fn tally(replies: &[String], prefixes: &[&str]) -> Vec<usize> {
    let mut counts = vec![0; prefixes.len()];
    for reply in replies {
        let i = prefixes
            .iter()
            .position(|p| reply.starts_with(p))
            .unwrap_or_else(|| panic!("unexpected reply {reply:?}"));
        counts[i] += 1;
    }
    counts
}

/// Wrong guesses one after the other (each after its delay) until one is
/// refused without being judged; how many were judged, `judged` before.
async fn guess_until_refused(proxy: SocketAddr, from: Ipv4Addr, mut judged: usize) -> usize {
    loop {
        let line = imap_login(proxy, from, USER, "again").await;
        if line.starts_with("a1 NO [AUTHENTICATIONFAILED]") {
            judged += 1;
            continue;
        }
        assert!(line.starts_with("a1 NO [UNAVAILABLE]"), "{line}");
        return judged;
    }
}

struct Fakes {
    _pki: TestPki,
    tokens: FakeTokenServer,
    state_dir: tempfile::TempDir,
    _imap: FakeImapServer,
    _pop3: FakePop3Server,
    _smtp: FakeSmtpServer,
    text: String,
}

/// IMAP, POP3 and SMTP listeners (in that order) for `USER`, signed in.
async fn fakes() -> Fakes {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let imap_server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let pop3_server = FakePop3Server::start(&pki, tokens.state.clone(), Pop3Opts::default()).await;
    let smtp_server = FakeSmtpServer::start(&pki, tokens.state.clone(), SmtpOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[
            imap(imap_server.addr),
            pop3(pop3_server.addr),
            smtp(smtp_server.addr),
        ],
        "",
    );
    Fakes {
        _pki: pki,
        tokens,
        state_dir,
        _imap: imap_server,
        _pop3: pop3_server,
        _smtp: smtp_server,
        text,
    }
}

/// Finding 2: another local user sends twelve and more parallel wrong
/// logins, as a name that is no account and as the real account; the real
/// user's client, on its own uid, still logs in at once with its password.
#[tokio::test(start_paused = true)]
async fn another_local_users_guesses_do_not_lock_the_owner_out() {
    let f = fakes().await;
    let running = start(&f.text).await;
    users_by_address(&running);
    let addr = running.addrs[0];
    // The owner's client binds the password (the first login after authorize).
    let line = imap_login(addr, ALICE, USER, PASSWORD).await;
    assert!(line.starts_with("a1 OK"), "{line}");

    let mut attack = JoinSet::new();
    for i in 0..16 {
        attack.spawn(async move { imap_login(addr, MALLORY, "nobody@x", "guess").await });
        attack.spawn(async move { imap_login(addr, MALLORY, USER, &format!("guess-{i}")).await });
        // Unknown names from the owner's own uid count for names that are
        // no account, never against the owner's account.
        attack.spawn(async move { imap_login(addr, ALICE, "nobody@x", "guess").await });
    }
    let replies: Vec<String> = attack.join_all().await;
    let [judged, refused] = tally(
        &replies,
        &["a1 NO [AUTHENTICATIONFAILED]", "a1 NO [UNAVAILABLE]"],
    )[..] else {
        unreachable!()
    };
    assert_eq!(judged + refused, 48);
    assert!(refused > 0, "the attack was throttled: {replies:?}");
    // Mallory goes on until refused; then even the right password is not
    // checked for Mallory...
    guess_until_refused(addr, MALLORY, 0).await;
    let line = imap_login(addr, MALLORY, USER, PASSWORD).await;
    assert!(line.starts_with("a1 NO [UNAVAILABLE]"), "{line}");
    // ...the owner is not even slowed down.
    let started = Instant::now();
    let line = imap_login(addr, ALICE, USER, PASSWORD).await;
    assert!(line.starts_with("a1 OK"), "{line}");
    assert!(started.elapsed() < FIRST_DELAY, "{:?}", started.elapsed());
    running.shutdown().await;
}

/// Without the injected lookup, a loopback client is keyed by its owner
/// uid as the OS reports it: this test's own.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_loopback_client_is_keyed_by_its_real_owner() {
    let f = fakes().await;
    let running = start(&f.text).await;
    let client = tokio::net::TcpStream::connect(running.addrs[0])
        .await
        .unwrap();
    let source = running
        .context
        .gate
        .accounts()
        .throttle
        .source(client.local_addr().unwrap(), Some(running.addrs[0]))
        .await;
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    assert_eq!(
        source,
        xoauth2_proxy::auth::throttle::Source::LocalUser(PeerUser::Uid(uid))
    );
    running.shutdown().await;
}

/// Finding 3: 60 parallel wrong guesses per protocol, each protocol from a
/// local user of its own: at most LOCKOUT_FAILURES are judged, the rest get
/// the temporary reply; the refusal outlives a reload.
#[tokio::test(start_paused = true)]
async fn parallel_guesses_are_counted_as_they_arrive_and_survive_a_reload() {
    const GUESSES: usize = 60;
    let f = fakes().await;
    let running = start(&f.text).await;
    users_by_address(&running);
    let (imap_at, pop3_at, smtp_at) = (running.addrs[0], running.addrs[1], running.addrs[2]);
    // The owner's first login binds the password.
    let line = imap_login(imap_at, ALICE, USER, PASSWORD).await;
    assert!(line.starts_with("a1 OK"), "{line}");
    let (imap_guesser, pop3_guesser, smtp_guesser) = (
        Ipv4Addr::new(127, 0, 0, 11),
        Ipv4Addr::new(127, 0, 0, 12),
        Ipv4Addr::new(127, 0, 0, 13),
    );

    let mut imap_guesses = JoinSet::new();
    let mut pop3_guesses = JoinSet::new();
    let mut smtp_guesses = JoinSet::new();
    for i in 0..GUESSES {
        let guess = format!("guess-{i}");
        imap_guesses.spawn({
            let guess = guess.clone();
            async move { imap_login(imap_at, imap_guesser, USER, &guess).await }
        });
        pop3_guesses.spawn({
            let guess = guess.clone();
            async move { pop3_login(pop3_at, pop3_guesser, &guess).await }
        });
        smtp_guesses.spawn(async move { smtp_login(smtp_at, smtp_guesser, &guess).await });
    }
    let per_protocol = [
        (
            imap_guesses.join_all().await,
            ["a1 NO [AUTHENTICATIONFAILED]", "a1 NO [UNAVAILABLE]"],
        ),
        (
            pop3_guesses.join_all().await,
            ["-ERR [AUTH]", "-ERR [SYS/TEMP]"],
        ),
        (smtp_guesses.join_all().await, ["535 5.7.8", "454 4.7.0"]),
    ];
    for (replies, [judged_reply, temporary_reply]) in &per_protocol {
        let counts = tally(replies, &[judged_reply, temporary_reply]);
        assert_eq!(counts[0] + counts[1], GUESSES);
        assert_eq!(
            counts[0], LOCKOUT_FAILURES as usize,
            "{judged_reply}: exactly the window's failures judged"
        );
    }
    // The IMAP guesser goes on, one guess after the other, until refused:
    // never more than LOCKOUT_FAILURES judged in all.
    let judged = tally(
        &per_protocol[0].0,
        &["a1 NO [AUTHENTICATIONFAILED]", "a1 NO"],
    )[0];
    let judged = guess_until_refused(imap_at, imap_guesser, judged).await;
    assert_eq!(judged, LOCKOUT_FAILURES as usize);
    let line = imap_login(imap_at, imap_guesser, USER, PASSWORD).await;
    assert!(line.starts_with("a1 NO [UNAVAILABLE]"), "{line}");

    // A reload keeps the throttle: still refused, the owner still welcome.
    let (running, reloaded) = running.reload(parse(&f.text)).await;
    reloaded.expect("the reload applies");
    let line = imap_login(imap_at, imap_guesser, USER, PASSWORD).await;
    assert!(line.starts_with("a1 NO [UNAVAILABLE]"), "{line}");
    let line = imap_login(imap_at, ALICE, USER, PASSWORD).await;
    assert!(line.starts_with("a1 OK"), "{line}");
    let line = pop3_login(pop3_at, ALICE, PASSWORD).await;
    assert!(line.starts_with("+OK"), "{line}");
    running.shutdown().await;
}

fn creds(user: &str, password: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: SecretString::from(password.to_owned()),
    }
}

/// Tokens as `authorize` leaves them for `address`: sealed under the
/// password chosen at sign-in (`<local part>-password`), accepted by the
/// fake token endpoint.
fn signed_in(f: &Fakes, address: &str) {
    let refresh = format!("rt-{address}");
    f.tokens.state.seed_refresh_token(&refresh);
    let local = address.split('@').next().unwrap_or(address);
    harness::seal_tokens(
        f.state_dir.path(),
        address,
        &format!("{local}-password"),
        &StoredTokens {
            refresh_token: Some(SecretString::from(refresh)),
            access_token: None,
            expires_at: None,
        },
    );
}

/// 10,000 pipelined LOGINs for random catch-all addresses, in batches on
/// one connection from `from`: every reply is a refusal.
async fn probe_catch_all(
    proxy: SocketAddr,
    from: Ipv4Addr,
    round: usize,
) -> HashMap<String, usize> {
    const PROBES: usize = 10_000;
    const BATCH: usize = 100;
    let mut c = TestClient::connect_from(proxy, from.into()).await;
    c.set_timeout(CLIENT_WAIT);
    c.expect_prefix(b"* OK").await;
    let mut replies: HashMap<String, usize> = HashMap::new();
    for batch in 0..PROBES / BATCH {
        let mut lines = String::new();
        for i in 0..BATCH {
            let n = (round * PROBES + batch * BATCH + i) as u64;
            let random = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
            lines.push_str(&format!("p{i} LOGIN u{random:x}@example.test pw\r\n"));
        }
        c.send(lines.as_bytes()).await;
        for i in 0..BATCH {
            let tagged = c.read_until_tagged(&format!("p{i}")).await;
            let reply = String::from_utf8_lossy(tagged.last().unwrap()).into_owned();
            let code = reply
                .split_whitespace()
                .nth(2)
                .unwrap_or_default()
                .to_owned();
            *replies.entry(code).or_default() += 1;
        }
    }
    replies
}

/// Finding 4: a catch-all account; 10,000 pipelined logins for random
/// addresses make no entry and take no memory, and a real new employee
/// (tokens on disk, or a sign-in finished on the page) still logs in, from
/// the attacker's own local user even, after a reload too.
#[tokio::test(start_paused = true)]
async fn probing_a_catch_all_cannot_crowd_out_new_employees() {
    let mut f = fakes().await;
    // The probing connection outlives the throttle's delays (79 s of them
    // before the refusal) instead of meeting the pre-login deadline.
    f.text = f
        .text
        .replace(
            &format!("username = \"{USER}\""),
            "username = \"@example.test\"",
        )
        .replace("[proxy]\n", "[proxy]\npreauth_timeout_secs = 3600\n");
    let running = start(&f.text).await;
    // Every loopback client is the same local user: the attacker shares
    // the employees' source.
    running
        .context
        .gate
        .accounts()
        .throttle
        .identify_peers_with(|_, _| Some(PeerUser::Uid(4242)));
    let addr = running.addrs[0];
    let same_user = Origin {
        peer: SocketAddr::new(ALICE.into(), 40000),
        local: Some(addr),
    };

    let replies = probe_catch_all(addr, MALLORY, 0).await;
    assert_eq!(replies.values().sum::<usize>(), 10_000);
    let judged = replies.get("[AUTHENTICATIONFAILED]").copied().unwrap_or(0);
    assert!(
        judged <= LOCKOUT_FAILURES as usize,
        "probes are throttled: {replies:?}"
    );
    assert_eq!(replies.get("[UNAVAILABLE]"), Some(&(10_000 - judged)));
    let ctx = &running.context;
    assert_eq!(ctx.gate.tokens().catch_all_addresses(), 0, "no entry made");
    assert!(ctx.gate.accounts().throttle.tracked() <= 1, "one record");

    // A new employee signed in with `authorize` (tokens on disk)...
    signed_in(&f, "new@example.test");
    let grant = ctx
        .login(&creds("New@Example.test", "new-password"), same_user)
        .await
        .expect("the new employee logs in");
    assert_eq!(grant.upstream_user(), "new@example.test");
    // ...and one who finished a sign-in on the local page.
    signed_in(&f, "hired@example.test");
    ctx.gate.tokens().signed_in("hired@example.test").await;
    assert_eq!(ctx.gate.tokens().catch_all_addresses(), 2);
    ctx.login(&creds("hired@example.test", "hired-password"), same_user)
        .await
        .expect("a sign-in on the page makes an account");

    // After a reload: the entries stay, probing still makes none, and the
    // next new employee logs in.
    let (running, reloaded) = running.reload(parse(&f.text)).await;
    reloaded.expect("the reload applies");
    let ctx = &running.context;
    assert_eq!(ctx.gate.tokens().catch_all_addresses(), 2);
    let replies = probe_catch_all(addr, MALLORY, 1).await;
    assert!(
        replies.get("[UNAVAILABLE]").copied().unwrap_or(0) >= 10_000 - LOCKOUT_FAILURES as usize
    );
    assert_eq!(ctx.gate.tokens().catch_all_addresses(), 2);
    signed_in(&f, "later@example.test");
    for (user, password) in [
        ("later@example.test", "later-password"),
        ("new@example.test", "new-password"),
        ("hired@example.test", "hired-password"),
    ] {
        ctx.login(&creds(user, password), same_user)
            .await
            .unwrap_or_else(|e| panic!("{user}: {e:?}"));
    }
    // The signed-in address logs in end to end.
    let line = imap_login(addr, ALICE, USER, PASSWORD).await;
    assert!(line.starts_with("a1 OK"), "{line}");
    assert_eq!(ctx.gate.tokens().catch_all_addresses(), 4);
    running.shutdown().await;
}
