//! Graceful shutdown: open sessions get `shutdown_grace_secs`, the rest are
//! closed, and the token store on disk stays whole (a refresh in flight
//! still writes its rotated refresh token).

mod harness;
mod support;

use std::time::{Duration, Instant};

use harness::{PASSWORD, config_text, imap, seed_tokens, start};
use support::token_server::GRANT_REFRESH;
use support::*;
use xoauth2_proxy::auth::vault::{Entry, TokenStore};

const GRACE_SECS: u64 = 1;

async fn login(c: &mut TestClient) {
    c.read_line().await;
    c.send(format!("L LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    let lines = c.read_until_tagged("L").await;
    let last = String::from_utf8_lossy(lines.last().expect("tagged")).into_owned();
    assert!(last.starts_with("L OK"), "{last}");
}

fn assert_sealed_on_disk(state_dir: &std::path::Path) {
    match TokenStore::new(state_dir).load_entry(USER) {
        Ok(Some(Entry::Sealed(_))) => {}
        Ok(Some(Entry::Unsealed(_))) => panic!("the tokens are on disk unsealed"),
        Ok(None) => panic!("the tokens are gone from disk"),
        Err(e) => panic!("the token file is damaged: {e}"),
    }
}

/// Two clients in the middle of fetching a large message when the proxy is
/// told to stop: one keeps reading and gets the whole message, one has
/// stopped reading and is closed. The shutdown takes the grace time, not
/// longer, and both connections end (no hang).
#[tokio::test]
async fn transfers_during_shutdown_complete_or_are_closed_within_the_grace() {
    let big = message(8 * 1024 * 1024, 11);
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(
        &pki,
        tokens.state.clone(),
        ImapOpts {
            messages: vec![big.clone()],
            ..ImapOpts::default()
        },
    )
    .await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        &format!("shutdown_grace_secs = {GRACE_SECS}"),
    );
    let running = start(&text).await;
    let addr = running.addrs[0];

    let mut clients = Vec::new();
    for _ in 0..2 {
        let mut c = TestClient::connect(addr).await;
        login(&mut c).await;
        c.send(b"s SELECT INBOX\r\n").await;
        c.read_until_tagged("s").await;
        c.send(b"f FETCH 1 BODY[]\r\n").await;
        let head = c.read_line_str().await;
        assert_eq!(head, format!("* 1 FETCH (BODY[] {{{}}}", big.len()));
        // Part of the message is through; the rest is in flight.
        let first = c.read_exact(64 * 1024).await;
        assert_eq!(first, big[..64 * 1024]);
        clients.push(c);
    }
    let mut stalled = clients.pop().expect("two clients");
    let mut reader = clients.pop().expect("two clients");
    assert_eq!(running.sessions.open(), 2);

    let started = Instant::now();
    let stop = tokio::spawn(running.shutdown());
    let rest = reader.read_exact(big.len() - 64 * 1024).await;
    assert!(
        rest == big[64 * 1024..],
        "the message was cut or changed during the shutdown"
    );
    reader.expect(b")").await;
    reader.expect(b"f OK FETCH completed.").await;
    stop.await.expect("shutdown task");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(GRACE_SECS) - Duration::from_millis(50),
        "the shutdown did not wait for the sessions: {took:?}"
    );
    assert!(
        took < Duration::from_secs(GRACE_SECS + 3),
        "the shutdown overran its grace time: {took:?}"
    );

    // Both connections were closed by the proxy: the reader's session was
    // idle, the stalled one still had most of the message to send.
    reader.set_timeout(Duration::from_secs(5));
    reader.expect_eof().await;
    stalled.set_timeout(Duration::from_secs(5));
    let leftover = stalled.read_to_end().await;
    assert!(
        leftover.len() < big.len(),
        "the stalled client got everything"
    );
    assert_sealed_on_disk(state_dir.path());
    // And nothing listens any more.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A login whose token refresh is still at the endpoint when the proxy
/// stops: the session is closed at once (no grace), but the refresh runs
/// to its end and the rotated refresh token reaches the disk; with
/// single-use refresh tokens, a restarted proxy can only log in if it did.
#[tokio::test]
async fn a_refresh_in_flight_at_shutdown_still_writes_the_rotated_token() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    tokens.state.set_single_use_refresh_tokens(true);
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "shutdown_grace_secs = 0",
    );
    let running = start(&text).await;
    tokens.state.set_delay(Duration::from_millis(800));
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.read_line().await;
    c.send(format!("L LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    // Wait until the refresh request is at the endpoint.
    let waiting = Instant::now();
    while tokens.state.in_flight() == 0 {
        assert!(waiting.elapsed() < Duration::from_secs(10), "no refresh");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    running.shutdown().await;
    c.set_timeout(Duration::from_secs(5));
    c.expect_eof().await;
    assert_eq!(tokens.state.requests(GRANT_REFRESH), 1);
    assert!(!tokens.state.is_valid_refresh_token(harness::SEED_REFRESH));
    assert_sealed_on_disk(state_dir.path());

    tokens.state.set_delay(Duration::ZERO);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "refresh_margin_secs = 100000",
    );
    let running = start(&text).await;
    let mut c = TestClient::connect(running.addrs[0]).await;
    login(&mut c).await;
    assert_eq!(tokens.state.requests(GRANT_REFRESH), 2);
    assert_eq!(server.state.auth_successes(), 1);
}
