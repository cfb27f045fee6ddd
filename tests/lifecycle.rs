//! The token lifecycle end to end: backoff after transient token-endpoint
//! failures, the background refresh of unlocked accounts (including after a
//! jump of the wall clock, as when a laptop wakes), and shared mailboxes.

mod harness;
mod support;

use std::time::{Duration, Instant};

use harness::{GateLogin, PASSWORD, Proxy, config_text, imap, seed_tokens};
use secrecy::{ExposeSecret, SecretString};
use support::token_server::{GRANT_REFRESH, Mode};
use support::*;
use xoauth2_proxy::auth::password::SealKey;
use xoauth2_proxy::auth::tokens::{BACKOFF_BASE, BACKOFF_JITTER, BACKOFF_MAX, LOGIN_PROBE_EVERY};
use xoauth2_proxy::auth::vault::{Entry, TokenStore};
use xoauth2_proxy::protocol::Failure;
use xoauth2_proxy::sasl::Credentials;

async fn proxy(proxy_extra: &str) -> (Proxy, FakeImapServer) {
    proxy_with(proxy_extra, ImapOpts::default(), "").await
}

async fn proxy_with(
    proxy_extra: &str,
    opts: ImapOpts,
    account_extra: &str,
) -> (Proxy, FakeImapServer) {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), opts).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let mut text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        proxy_extra,
    );
    text.push_str(account_extra);
    (Proxy::start(pki, tokens, state_dir, &text).await, server)
}

fn creds() -> Credentials {
    Credentials {
        username: USER.into(),
        password: SecretString::from(PASSWORD.to_owned()),
    }
}

/// The refresh token sealed on disk.
fn sealed_refresh_token(state_dir: &std::path::Path) -> String {
    match TokenStore::new(state_dir)
        .load_entry(USER)
        .unwrap()
        .unwrap()
    {
        Entry::Sealed(s) => {
            let key = SealKey::derive(PASSWORD.as_bytes(), s.params(), s.salt()).unwrap();
            let tokens = s.open(&key).expect("the password opens the seal");
            tokens.refresh_token.unwrap().expose_secret().to_owned()
        }
        Entry::Unsealed(_) => panic!("the tokens are not sealed"),
    }
}

async fn wait_for_refreshes(proxy: &Proxy, want: usize, limit: Duration) {
    let started = Instant::now();
    while proxy.tokens.state.requests(GRANT_REFRESH) < want {
        assert!(
            started.elapsed() < limit,
            "{} refreshes after {limit:?}, expected {want}",
            proxy.tokens.state.requests(GRANT_REFRESH)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn logins_during_a_backoff_do_not_reach_the_token_endpoint() {
    let (proxy, server) = proxy("").await;
    let ctx = &proxy.running.context;
    proxy.tokens.state.set_mode(Mode::Status(503));
    for _ in 0..10 {
        match ctx.token_for(&creds()).await {
            // The client hears a fixed text; the log has the HTTP status.
            Err(Failure::Unavailable(m)) => assert!(m.contains("try again later"), "{m}"),
            other => panic!("expected a transient failure: {other:?}"),
        }
    }
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
    assert_eq!(server.state.auth_attempts(), 0);
    let wait = ctx.gate.tokens().retry_in(USER).await.expect("backing off");
    assert!(
        wait <= BACKOFF_BASE.mul_f64(1.0 + BACKOFF_JITTER),
        "{wait:?}"
    );
    // The endpoint is back: after the wait the next login refreshes and works.
    proxy.tokens.state.set_mode(Mode::Normal);
    tokio::time::sleep(wait).await;
    ctx.token_for(&creds()).await.unwrap();
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 2);
    assert!(ctx.gate.tokens().retry_in(USER).await.is_none());
    assert_eq!(
        sealed_refresh_token(proxy.state_dir.path()),
        proxy.tokens.state.latest_refresh_token().unwrap(),
        "the seed refresh token was kept through the failures and rotated after"
    );
}

#[tokio::test]
async fn an_unlocked_account_is_refreshed_before_expiry_without_a_login() {
    // A 2 s margin: checks every 500 ms, background refresh with 3–3.5 s left.
    let (proxy, _server) = proxy("refresh_margin_secs = 2").await;
    let ctx = &proxy.running.context;
    proxy.tokens.state.set_access_token_lifetime(6);
    ctx.token_for(&creds()).await.unwrap();
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
    // What the background refresh gets lives long: it is the last one.
    proxy.tokens.state.set_access_token_lifetime(3600);
    wait_for_refreshes(&proxy, 2, Duration::from_secs(10)).await;
    assert!(ctx.gate.tokens().wait_idle(Duration::from_secs(5)).await);
    assert_eq!(
        sealed_refresh_token(proxy.state_dir.path()),
        proxy.tokens.state.latest_refresh_token().unwrap(),
        "the rotated refresh token is on disk"
    );
    // The next login takes the refreshed token: no request, no KDF.
    let (_, at) = ctx.token_for(&creds()).await.unwrap();
    assert!(proxy.tokens.state.is_valid_access_token(at.expose_secret()));
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 2);
    assert_eq!(ctx.gate.tokens().kdf_runs(), 1);

    // The machine sleeps for two hours: the wall clock jumps past the expiry.
    // The first thing that happens after is a refresh, not a failed login.
    ctx.gate
        .tokens()
        .age_access_token(USER, Duration::from_secs(2 * 3600));
    wait_for_refreshes(&proxy, 3, Duration::from_secs(10)).await;
    assert!(ctx.gate.tokens().wait_idle(Duration::from_secs(5)).await);
    let (_, at) = ctx.token_for(&creds()).await.unwrap();
    assert!(proxy.tokens.state.is_valid_access_token(at.expose_secret()));
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 3);
    assert_eq!(
        sealed_refresh_token(proxy.state_dir.path()),
        proxy.tokens.state.latest_refresh_token().unwrap()
    );
}

#[tokio::test]
async fn a_locked_account_is_not_refreshed_in_the_background() {
    let (proxy, _server) = proxy("refresh_margin_secs = 2").await;
    // No client has logged in: nothing is unlocked, nothing is refreshed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(proxy.tokens.state.total_requests(), 0);
    proxy.running.shutdown().await;
}

/// Logs in over IMAP as the test user and returns the tagged reply line.
async fn imap_login(proxy: &Proxy) -> String {
    let mut c = TestClient::connect(proxy.addr(0)).await;
    let greeting = c.read_line_str().await;
    assert!(greeting.starts_with("* OK "), "{greeting}");
    c.send(format!("a1 LOGIN {USER} \"{PASSWORD}\"\r\n").as_bytes())
        .await;
    loop {
        let line = c.read_line_str().await;
        if line.starts_with("a1 ") {
            return line;
        }
    }
}

const SHARED: &str = "info@contoso.com";

#[tokio::test]
async fn a_shared_mailbox_is_opened_with_the_owners_token() {
    // The server accepts only `user=info@contoso.com`.
    let opts = || ImapOpts {
        user: SHARED.to_owned(),
        ..ImapOpts::default()
    };
    let (proxy, server) = proxy_with("", opts(), &format!("mailbox = \"{SHARED}\"\n")).await;
    let line = imap_login(&proxy).await;
    assert!(line.starts_with("a1 OK"), "{line}");
    assert_eq!(server.state.auth_attempts(), 1);
    let ctx = &proxy.running.context;
    let (user, _) = ctx.token_for(&creds()).await.unwrap();
    assert_eq!(user, SHARED, "the user= sent upstream");
    // The tokens belong to the signed-in owner, under the owner's name.
    assert!(sealed_refresh_token(proxy.state_dir.path()).starts_with("rt-"));
    assert!(
        !TokenStore::new(proxy.state_dir.path())
            .path_for(SHARED)
            .exists()
    );
    // A refusal of the token sent for the mailbox drops the owner's cached
    // token: tokens are dropped by account, not by the upstream user name.
    let refreshes = proxy.tokens.state.requests(GRANT_REFRESH);
    ctx.gate.tokens().discard_access_token(SHARED);
    ctx.token_for(&creds()).await.unwrap();
    assert_eq!(
        proxy.tokens.state.requests(GRANT_REFRESH),
        refreshes,
        "the mailbox is not an account: nothing of the owner's is dropped"
    );
    ctx.gate.tokens().discard_access_token(USER);
    ctx.token_for(&creds()).await.unwrap();
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), refreshes + 1);

    // Without `mailbox`, the owner's address goes as user= and this server refuses it.
    let (proxy, _server) = proxy_with("", opts(), "").await;
    let line = imap_login(&proxy).await;
    assert!(line.starts_with("a1 NO"), "{line}");
}

/// Logs in until the gate hands out a token, answering `Unavailable` with
/// another try; panics on any other refusal or after `limit` (a detector of
/// a hang, not a measurement).
async fn login_until_ok(proxy: &Proxy, limit: Duration) -> usize {
    let ctx = &proxy.running.context;
    let started = Instant::now();
    let mut refused = 0;
    loop {
        match ctx.token_for(&creds()).await {
            Ok(_) => return refused,
            Err(Failure::Unavailable(_)) => refused += 1,
            Err(other) => panic!("expected a transient refusal: {other:?}"),
        }
        assert!(started.elapsed() < limit, "no login after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn after_an_outage_a_login_probes_the_endpoint_before_the_backoff_ends() {
    let (proxy, _server) = proxy("").await;
    let ctx = &proxy.running.context;
    proxy.tokens.state.set_mode(Mode::Status(503));
    assert!(matches!(
        ctx.token_for(&creds()).await,
        Err(Failure::Unavailable(_))
    ));
    // What an hour offline leaves behind: the background waits minutes.
    ctx.gate.tokens().prolong_backoff(USER, BACKOFF_MAX).await;
    proxy.tokens.state.set_mode(Mode::Normal);
    let refused = login_until_ok(&proxy, LOGIN_PROBE_EVERY * 4).await;
    assert!(
        refused > 0,
        "the first logins after a try are answered locally"
    );
    assert_eq!(
        proxy.tokens.state.requests(GRANT_REFRESH),
        2,
        "one failed refresh, then one probe by a login; the other logins sent nothing"
    );
    assert!(
        ctx.gate.tokens().retry_in(USER).await.is_none(),
        "the probe's success ended the backoff"
    );
}

#[tokio::test]
async fn logins_do_not_probe_against_a_429() {
    let (proxy, _server) = proxy("").await;
    let ctx = &proxy.running.context;
    proxy.tokens.state.set_mode(Mode::TooManyRequests {
        retry_after_secs: 60,
    });
    assert!(ctx.token_for(&creds()).await.is_err());
    proxy.tokens.state.set_mode(Mode::Normal);
    // Past the probe interval, still inside the endpoint's Retry-After.
    tokio::time::sleep(LOGIN_PROBE_EVERY + Duration::from_millis(200)).await;
    for _ in 0..5 {
        assert!(matches!(
            ctx.token_for(&creds()).await,
            Err(Failure::Unavailable(_))
        ));
    }
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
    assert!(ctx.gate.tokens().retry_in(USER).await.unwrap() > Duration::from_secs(50));
}

#[tokio::test]
async fn short_lived_tokens_are_not_refreshed_in_the_first_half_of_their_life() {
    // The default 300 s margin, and access tokens that live 5 s.
    let (proxy, _server) = proxy("").await;
    proxy.tokens.state.set_access_token_lifetime(5);
    let ctx = proxy.running.context.clone();
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let ctx = ctx.clone();
        logins.spawn(async move { ctx.token_for(&creds()).await.map(|(_, t)| t) });
    }
    let mut tokens = std::collections::HashSet::new();
    while let Some(r) = logins.join_next().await {
        tokens.insert(r.unwrap().unwrap().expose_secret().to_owned());
    }
    assert_eq!(
        proxy.tokens.state.requests(GRANT_REFRESH),
        1,
        "one refresh for the seed token, then its result is shared"
    );
    assert_eq!(tokens.len(), 1);
}

#[tokio::test]
async fn a_refused_refresh_token_leaves_the_access_token_in_use_until_it_expires() {
    let (proxy, _server) = proxy("").await;
    let ctx = &proxy.running.context;
    let (_, first) = ctx.token_for(&creds()).await.unwrap();
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
    // Revoked upstream; the access token in hand has two minutes left,
    // inside the refresh margin.
    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    let lifetime = Duration::from_secs(3600);
    ctx.gate
        .tokens()
        .age_access_token(USER, lifetime - Duration::from_secs(120));
    for _ in 0..5 {
        let (_, at) = ctx.token_for(&creds()).await.expect("the token in hand");
        assert_eq!(at.expose_secret(), first.expose_secret());
    }
    assert_eq!(
        proxy.tokens.state.requests(GRANT_REFRESH),
        2,
        "one refused refresh; no more tries"
    );
    let rows = ctx.gate.tokens().status().await;
    let row = rows.iter().find(|r| r.username == USER).unwrap();
    let said = row.last_error.as_deref().unwrap_or_default();
    assert!(
        said.contains("invalid_grant") && said.contains("sign in again before then"),
        "{said}"
    );
    // Expired: now the login says a sign-in is needed.
    ctx.gate
        .tokens()
        .age_access_token(USER, Duration::from_secs(120));
    assert!(matches!(
        ctx.token_for(&creds()).await,
        Err(Failure::SignInNeeded(_))
    ));
}
