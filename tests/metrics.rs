//! `metrics_listen` end to end: the proxy in-process against the fakes,
//! IMAP logins (right and wrong password), a transfer of known size and a
//! token refresh, then `/metrics` scraped over HTTP and its figures checked.

mod harness;
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::{PASSWORD, Proxy, config_text, dead_addr, imap, seed_tokens, setup};
use support::token_server::GRANT_REFRESH;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a figure may take to settle (a session's end after LOGOUT).
const SETTLE: Duration = Duration::from_secs(10);
/// The metrics server's connection cap (`metrics::serve::MAX_CONNECTIONS`).
const MAX_METRICS_CONNECTIONS: usize = 8;
/// The message fetched through the proxy.
const MESSAGE_BYTES: usize = 300 * 1024;

async fn proxy(extra: &str) -> (Proxy, FakeImapServer) {
    proxy_to(extra, None).await
}

/// The proxy in front of the fake IMAP server, or of `upstream` instead.
async fn proxy_to(extra: &str, upstream: Option<SocketAddr>) -> (Proxy, FakeImapServer) {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let message: Vec<u8> = (0..MESSAGE_BYTES).map(|i| b'a' + (i % 26) as u8).collect();
    let server = FakeImapServer::start(
        &pki,
        tokens.state.clone(),
        ImapOpts {
            messages: vec![message],
            ..ImapOpts::default()
        },
    )
    .await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let extra = format!("metrics_listen = \"127.0.0.1:0\"\n{extra}");
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(upstream.unwrap_or(server.addr))],
        &extra,
    );
    (Proxy::start(pki, tokens, state_dir, &text).await, server)
}

/// `GET /metrics` over a fresh connection: the status line and the body.
async fn scrape(addr: SocketAddr) -> (String, String) {
    let mut c = tokio::net::TcpStream::connect(addr).await.expect("connect");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    tokio::time::timeout(SETTLE, c.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .expect("read");
    let answer = String::from_utf8(answer).expect("utf-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head and a body");
    (head.to_owned(), body.to_owned())
}

/// The value of the sample `name` whose labels include all of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (labels_text, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ")?,
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| labels_text.contains(&format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().expect("a number"))
    })
}

/// Scrapes until `check` holds for the body (or the time is up).
async fn scrape_until(addr: SocketAddr, check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + SETTLE;
    loop {
        let (_, body) = scrape(addr).await;
        if check(&body) || Instant::now() > deadline {
            return body;
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn login(proxy: &Proxy, password: &str) -> (TestClient, String) {
    let mut c = TestClient::connect(proxy.addr(0)).await;
    c.expect_prefix(b"* OK").await;
    c.send(format!("a LOGIN {USER} \"{password}\"\r\n").as_bytes())
        .await;
    let reply = c.read_line_str().await;
    (c, reply)
}

#[tokio::test]
async fn a_scrape_counts_logins_bytes_sessions_and_refreshes() {
    let (proxy, server) = proxy("").await;
    let metrics = proxy.running.metrics_addr().expect("metrics are served");
    let listener = proxy.addr(0).to_string();
    let on = |outcome| [("listener", listener.as_str()), ("outcome", outcome)];

    let (wrong, reply) = login(&proxy, "not the password").await;
    assert!(reply.starts_with("a NO "), "{reply}");
    drop(wrong);

    let (mut c, reply) = login(&proxy, PASSWORD).await;
    assert!(reply.starts_with("a OK "), "{reply}");
    c.send(b"s SELECT INBOX\r\n").await;
    c.read_until_tagged("s").await;
    c.send(b"f FETCH 1 BODY[]\r\n").await;
    c.expect_prefix(b"* 1 FETCH (BODY[] ").await;
    assert_eq!(c.read_exact(MESSAGE_BYTES).await.len(), MESSAGE_BYTES);
    c.read_until_tagged("f").await;

    // While the session relays, a scrape sees it open.
    let (head, body) = scrape(metrics).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    let open = [("listener", listener.as_str())];
    assert_eq!(
        sample(&body, "xoauth2_proxy_sessions_open", &open),
        Some(1.0),
        "{body}"
    );
    c.send(b"l LOGOUT\r\n").await;
    c.read_until_tagged("l").await;
    c.expect_eof().await;
    drop(c);

    let (mut c, reply) = login(&proxy, PASSWORD).await;
    assert!(reply.starts_with("a OK "), "{reply}");
    c.send(b"l LOGOUT\r\n").await;
    c.read_until_tagged("l").await;
    c.expect_eof().await;
    drop(c);

    let body = scrape_until(metrics, |b| {
        sample(b, "xoauth2_proxy_sessions_open", &open) == Some(0.0)
            && sample(b, "xoauth2_proxy_connections_open", &open) == Some(0.0)
    })
    .await;
    assert_eq!(
        sample(&body, "xoauth2_proxy_sessions_open", &open),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "xoauth2_proxy_connections_open", &open),
        Some(0.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "xoauth2_proxy_connections_accepted_total", &open),
        Some(3.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "xoauth2_proxy_logins_total", &on("ok")),
        Some(2.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "xoauth2_proxy_logins_total", &on("wrong_password")),
        Some(1.0),
        "{body}"
    );
    for none in [
        "throttled",
        "sign_in_needed",
        "upstream_refused",
        "unavailable",
    ] {
        assert_eq!(
            sample(&body, "xoauth2_proxy_logins_total", &on(none)),
            Some(0.0),
            "{none}: {body}"
        );
    }
    let to_client = sample(
        &body,
        "xoauth2_proxy_relayed_bytes_total",
        &[("listener", listener.as_str()), ("direction", "to_client")],
    )
    .expect("bytes to the client");
    assert!(
        to_client >= MESSAGE_BYTES as f64,
        "{to_client} < {MESSAGE_BYTES}"
    );
    let to_server = sample(
        &body,
        "xoauth2_proxy_relayed_bytes_total",
        &[("direction", "to_server")],
    )
    .expect("bytes to the server");
    assert!(to_server > 0.0, "{body}");
    for stage in ["connect", "tls", "greeting"] {
        assert_eq!(
            sample(
                &body,
                "xoauth2_proxy_upstream_failures_total",
                &[("stage", stage)]
            ),
            Some(0.0),
            "{stage}: {body}"
        );
    }

    // One refresh (the seeded account had no access token), served to both logins.
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
    assert_eq!(server.state.auth_successes(), 2);
    let hashed = hashed_label(USER);
    let account = [("account", hashed.as_str())];
    let ok = [("account", hashed.as_str()), ("outcome", "ok")];
    assert_eq!(
        sample(&body, "xoauth2_proxy_token_refreshes_total", &ok),
        Some(1.0),
        "{body}"
    );
    let transient = [("account", hashed.as_str()), ("outcome", "transient")];
    assert_eq!(
        sample(&body, "xoauth2_proxy_token_refreshes_total", &transient),
        Some(0.0),
        "{body}"
    );
    let left = sample(
        &body,
        "xoauth2_proxy_access_token_expires_in_seconds",
        &account,
    )
    .expect("expiry");
    assert!(left > 0.0 && left <= 3600.0, "{left}");
    let since =
        sample(&body, "xoauth2_proxy_seconds_since_last_refresh", &account).expect("last refresh");
    assert!((0.0..60.0).contains(&since), "{since}");
    assert!(
        !body.contains(USER),
        "the address is in the metrics: {body}"
    );

    assert!(
        sample(&body, "xoauth2_proxy_uptime_seconds", &[]).is_some(),
        "{body}"
    );
    let version = [("version", env!("CARGO_PKG_VERSION"))];
    assert_eq!(
        sample(&body, "xoauth2_proxy_build_info", &version),
        Some(1.0),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    proxy.running.shutdown().await;
}

#[tokio::test]
async fn addresses_are_labels_only_when_asked_for() {
    let (proxy, _server) = proxy("metrics_account_labels = true\n").await;
    let (mut c, reply) = login(&proxy, PASSWORD).await;
    assert!(reply.starts_with("a OK "), "{reply}");
    c.send(b"l LOGOUT\r\n").await;
    c.read_until_tagged("l").await;
    drop(c);
    let (_, body) = scrape(proxy.running.metrics_addr().unwrap()).await;
    let ok = [("account", USER), ("outcome", "ok")];
    assert_eq!(
        sample(&body, "xoauth2_proxy_token_refreshes_total", &ok),
        Some(1.0),
        "{body}"
    );
    assert!(!body.contains(&hashed_label(USER)), "{body}");
    proxy.running.shutdown().await;
}

#[tokio::test]
async fn refusals_and_upstream_failures_are_counted() {
    let (proxy, _server) = proxy_to("max_connections = 1\n", Some(dead_addr().await)).await;
    let metrics = proxy.running.metrics_addr().unwrap();
    let listener = proxy.addr(0).to_string();
    // The upstream is down: the greeting is the proxy's own, the login's
    // second try to connect fails too.
    let (mut held, reply) = login(&proxy, PASSWORD).await;
    assert!(reply.starts_with("a NO [UNAVAILABLE]"), "{reply}");
    let mut refused = TestClient::connect(proxy.addr(0)).await;
    refused
        .expect_prefix(b"* BYE [UNAVAILABLE] Too many connections")
        .await;
    let (_, body) = scrape(metrics).await;
    let at = |key, value| [("listener", listener.as_str()), (key, value)];
    let busy = at("reason", "max_connections");
    assert_eq!(
        sample(&body, "xoauth2_proxy_connections_refused_total", &busy),
        Some(1.0),
        "{body}"
    );
    let connect = at("stage", "connect");
    assert_eq!(
        sample(&body, "xoauth2_proxy_upstream_failures_total", &connect),
        Some(2.0),
        "{body}"
    );
    let unavailable = at("outcome", "unavailable");
    assert_eq!(
        sample(&body, "xoauth2_proxy_logins_total", &unavailable),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(
            &body,
            "xoauth2_proxy_connections_accepted_total",
            &[("listener", listener.as_str())]
        ),
        Some(1.0),
        "{body}"
    );
    held.send(b"l LOGOUT\r\n").await;
    proxy.running.shutdown().await;
}

/// A fixed-account relay (a scanner's) counts its bytes as they pass, while
/// the session is still open, and a refusal of its unattended sign-in is
/// counted as a login like a client's.
#[tokio::test]
async fn a_fixed_account_relay_counts_bytes_as_they_pass_and_its_refusals() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let metrics_line = "metrics_listen = \"127.0.0.1:0\"\n";
    let running = (s.fixed_relay_in(server.addr, "127.0.0.1:0", &[USER], "", metrics_line)).await;
    let metrics = running.metrics_addr().expect("metrics are served");
    let listener = running.addrs[0].to_string();
    let on = |key, value| [("listener", listener.as_str()), (key, value)];
    let to_server = on("direction", "to_server");

    let line = "0123456789".repeat(7) + "\r\n";
    let body = format!("Subject: scan\r\n\r\n{}", line.repeat(2000));
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO scanner\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(body.as_bytes())).await;
    c.expect_smtp(250).await;
    // The session is still open: the bytes are in the figures already.
    let body_len = body.len() as f64;
    let figures = scrape_until(metrics, |b| {
        sample(b, "xoauth2_proxy_relayed_bytes_total", &to_server).unwrap_or(0.0) > body_len
    })
    .await;
    let up = sample(&figures, "xoauth2_proxy_relayed_bytes_total", &to_server);
    assert!(up.unwrap_or(0.0) > body_len, "{figures}");
    assert_eq!(
        sample(&figures, "xoauth2_proxy_logins_total", &on("outcome", "ok")),
        Some(1.0),
        "{figures}"
    );
    c.send(b"QUIT\r\n").await;
    c.expect_smtp(221).await;

    // The account's sign-in is revoked: the next session's MAIL FROM is
    // refused, and counted.
    s.tokens.state.revoke_all();
    running.context.gate.tokens().discard_access_token(USER);
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO scanner\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("MAIL FROM:<{USER}>\r\n").as_bytes()).await;
    c.expect_smtp(454).await;
    let (_, figures) = scrape(metrics).await;
    let needed = on("outcome", "sign_in_needed");
    assert_eq!(
        sample(&figures, "xoauth2_proxy_logins_total", &needed),
        Some(1.0),
        "{figures}"
    );
    c.send(b"QUIT\r\n").await;
    c.expect_smtp(221).await;
    running.shutdown().await;
}

/// `GET /metrics` from `source`: the status line.
async fn status_from(addr: SocketAddr, source: &str) -> String {
    let mut c = TestClient::connect_from(addr, source.parse().unwrap()).await;
    c.send(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    c.read_line_str().await
}

/// Peers outside `metrics_allow_from` get 403 at accept; over the cap of
/// connections a scraper gets 503, and a freed slot serves again.
#[tokio::test]
async fn peers_outside_allow_from_and_over_the_cap_are_refused() {
    let (proxy, _server) = proxy("metrics_allow_from = [\"127.0.0.2/32\"]\n").await;
    let metrics = proxy.running.metrics_addr().unwrap();
    let refused = status_from(metrics, "127.0.0.3").await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    let served = status_from(metrics, "127.0.0.2").await;
    assert!(served.starts_with("HTTP/1.1 200"), "{served}");

    // Idle kept-alive connections hold every slot (each one served once,
    // so it is surely past accept).
    let mut held = Vec::new();
    for _ in 0..MAX_METRICS_CONNECTIONS {
        let mut c = TestClient::connect_from(metrics, "127.0.0.2".parse().unwrap()).await;
        c.send(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let status = c.read_line_str().await;
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        held.push(c);
    }
    let busy = status_from(metrics, "127.0.0.2").await;
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    drop(held);
    let again = scrape_until_status(metrics, "HTTP/1.1 200").await;
    assert!(again, "a freed slot did not serve again");
    proxy.running.shutdown().await;
}

/// Asks until the status line starts with `want` (a closed connection's
/// slot comes back when its task ends).
async fn scrape_until_status(addr: SocketAddr, want: &str) -> bool {
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline {
        if status_from(addr, "127.0.0.2").await.starts_with(want) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test]
async fn only_metrics_is_served() {
    let (proxy, _server) = proxy("").await;
    let addr = proxy.running.metrics_addr().unwrap();
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(b"POST /metrics HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    proxy.running.shutdown().await;
}

/// The label of an address without `metrics_account_labels`: the first 12
/// hex digits of its SHA-256 (computed here independently).
fn hashed_label(address: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(address.to_ascii_lowercase().as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
