//! IMAP through the proxy, end to end: a fake token endpoint, a fake TLS
//! IMAP server that only speaks XOAUTH2, and the proxy in between.

mod harness;
mod support;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{PASSWORD, Proxy, config_text, dead_addr, imap, imap_starttls, seed_tokens, start};
use support::token_server::GRANT_REFRESH;
use support::*;

async fn proxy_with(opts: ImapOpts) -> (Proxy, FakeImapServer) {
    proxy_with_extra(opts, "").await
}

async fn proxy_with_extra(opts: ImapOpts, extra: &str) -> (Proxy, FakeImapServer) {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let starttls = opts.tls == Tls::StartTls;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), opts).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let upstream = if starttls {
        imap_starttls(server.addr)
    } else {
        imap(server.addr)
    };
    let text = config_text(&pki, state_dir.path(), &tokens.url(), &[upstream], extra);
    (Proxy::start(pki, tokens, state_dir, &text).await, server)
}

async fn connect(proxy: &Proxy) -> TestClient {
    let mut c = TestClient::connect(proxy.addr(0)).await;
    let greeting = c.read_line().await;
    assert!(
        greeting.starts_with(b"* OK "),
        "{}",
        String::from_utf8_lossy(&greeting)
    );
    c
}

fn login_line(tag: &str) -> String {
    format!("{tag} LOGIN {USER} {PASSWORD}\r\n")
}

#[tokio::test]
async fn greeting_and_capabilities_are_rewritten() {
    let (proxy, _server) = proxy_with(ImapOpts::default()).await;
    let mut c = TestClient::connect(proxy.addr(0)).await;
    c.expect(b"* OK [CAPABILITY IMAP4rev1 IMAP4 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+ AUTH=PLAIN AUTH=LOGIN] The Microsoft Exchange IMAP4 service is ready.")
        .await;
    c.send(b"c1 CAPABILITY\r\n").await;
    c.expect(b"* CAPABILITY IMAP4rev1 IMAP4 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+ AUTH=PLAIN AUTH=LOGIN")
        .await;
    c.expect(b"c1 OK CAPABILITY completed").await;

    let (proxy, _server) = proxy_with(ImapOpts {
        greeting_capabilities: true,
        ..ImapOpts::default()
    })
    .await;
    let mut c = TestClient::connect(proxy.addr(0)).await;
    let greeting = c.read_line_str().await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "),
        "{greeting}"
    );
    for hidden in ["XOAUTH2", "OAUTHBEARER", "LOGINDISABLED", "STARTTLS"] {
        assert!(!greeting.contains(hidden), "{hidden} in {greeting}");
    }
    assert!(greeting.contains(" AUTH=PLAIN AUTH=LOGIN]"), "{greeting}");
}

#[tokio::test]
async fn every_login_form_reaches_the_mailbox() {
    let (proxy, server) = proxy_with(ImapOpts {
        messages: vec![b"Subject: hi\r\n\r\nhello\r\n".to_vec()],
        ..ImapOpts::default()
    })
    .await;
    let plain_ir = B64.encode(format!("\0{USER}\0{PASSWORD}"));
    let forms: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("atoms", vec![login_line("a1").into_bytes()]),
        (
            "quoted",
            vec![format!("a1 LOGIN \"{USER}\" \"{PASSWORD}\"\r\n").into_bytes()],
        ),
        (
            "synchronising literals",
            vec![
                format!("a1 LOGIN {{{}}}\r\n", USER.len()).into_bytes(),
                format!("{USER} {{{}}}\r\n", PASSWORD.len()).into_bytes(),
                format!("{PASSWORD}\r\n").into_bytes(),
            ],
        ),
        (
            "non-synchronising literals",
            vec![
                format!(
                    "a1 LOGIN {{{}+}}\r\n{USER} {{{}+}}\r\n{PASSWORD}\r\n",
                    USER.len(),
                    PASSWORD.len()
                )
                .into_bytes(),
            ],
        ),
        (
            "literal and quoted",
            vec![
                format!("a1 LOGIN {{{}}}\r\n", USER.len()).into_bytes(),
                format!("{USER} \"{PASSWORD}\"\r\n").into_bytes(),
            ],
        ),
        (
            "AUTHENTICATE PLAIN with initial response",
            vec![format!("a1 AUTHENTICATE PLAIN {plain_ir}\r\n").into_bytes()],
        ),
        (
            "AUTHENTICATE PLAIN after a continuation",
            vec![
                b"a1 AUTHENTICATE PLAIN\r\n".to_vec(),
                format!("{plain_ir}\r\n").into_bytes(),
            ],
        ),
        (
            "AUTHENTICATE LOGIN",
            vec![
                b"a1 AUTHENTICATE LOGIN\r\n".to_vec(),
                format!("{}\r\n", B64.encode(USER)).into_bytes(),
                format!("{}\r\n", B64.encode(PASSWORD)).into_bytes(),
            ],
        ),
    ];
    for (name, parts) in forms {
        let mut c = connect(&proxy).await;
        let last = parts.len() - 1;
        for (i, part) in parts.iter().enumerate() {
            c.send(part).await;
            if i < last {
                let cont = c.read_line().await;
                assert!(
                    cont.starts_with(b"+"),
                    "{name}: expected a continuation, got {:?}",
                    String::from_utf8_lossy(&cont)
                );
            }
        }
        let ok = c.read_line_str().await;
        assert!(ok.starts_with("a1 OK "), "{name}: {ok}");
        c.send(b"a2 SELECT INBOX\r\n").await;
        let lines = c.read_until_tagged("a2").await;
        let last = String::from_utf8_lossy(lines.last().expect("a tagged line")).into_owned();
        assert!(last.starts_with("a2 OK"), "{name}: {last}");
        assert!(lines.iter().any(|l| l.starts_with(b"* 1 EXISTS")), "{name}");
        c.send(b"a3 LOGOUT\r\n").await;
        c.read_until_tagged("a3").await;
    }
    assert_eq!(server.state.auth_successes(), 8);
    assert_eq!(
        proxy.tokens.state.requests(GRANT_REFRESH),
        1,
        "one refresh serves every login"
    );
    assert!(
        server
            .state
            .commands_before_auth()
            .iter()
            .all(|c| !c.contains("LOGIN") && !c.contains("PLAIN")),
        "client credentials never reach the server: {:?}",
        server.state.commands_before_auth()
    );
}

/// Logs in with LOGIN and waits for the tagged OK.
async fn login(c: &mut TestClient) {
    c.send(login_line("L").as_bytes()).await;
    let lines = c.read_until_tagged("L").await;
    let last = String::from_utf8_lossy(lines.last().expect("tagged")).into_owned();
    assert!(last.starts_with("L OK"), "{last}");
}

#[tokio::test]
async fn a_refused_token_gets_the_servers_no_and_the_connection_stays_usable() {
    let (proxy, server) = proxy_with(ImapOpts {
        user: "someone-else@example.test".into(),
        ..ImapOpts::default()
    })
    .await;
    let mut c = connect(&proxy).await;
    c.send(login_line("a1").as_bytes()).await;
    c.expect(b"a1 NO [AUTHENTICATIONFAILED] Authentication failed.")
        .await;
    c.send(b"a2 NOOP\r\n").await;
    c.expect(b"a2 OK NOOP completed").await;
    c.send(login_line("a3").as_bytes()).await;
    c.expect(b"a3 NO [AUTHENTICATIONFAILED] Authentication failed.")
        .await;
    assert_eq!(server.state.auth_attempts(), 2);
    assert_eq!(server.state.auth_successes(), 0);
}

#[tokio::test]
async fn a_token_the_server_stopped_accepting_is_replaced_at_the_next_login() {
    let (proxy, server) = proxy_with(ImapOpts::default()).await;
    let mut c = connect(&proxy).await;
    login(&mut c).await;
    // The server invalidates the token the proxy still holds as fresh.
    proxy.tokens.state.expire_access_tokens();
    let mut c = connect(&proxy).await;
    c.send(login_line("r1").as_bytes()).await;
    c.expect(b"r1 NO [AUTHENTICATIONFAILED] Authentication failed.")
        .await;
    c.send(login_line("r2").as_bytes()).await;
    let ok = c.read_line_str().await;
    assert!(ok.starts_with("r2 OK"), "{ok}");
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 2);
    assert_eq!(server.state.auth_successes(), 2);
}

#[tokio::test]
async fn commands_pipelined_after_login_reach_the_server_after_its_ok() {
    let (proxy, server) = proxy_with(ImapOpts {
        messages: vec![b"Subject: one\r\n\r\nbody\r\n".to_vec()],
        ..ImapOpts::default()
    })
    .await;
    let mut c = connect(&proxy).await;
    let burst = format!(
        "{}p2 SELECT INBOX\r\np3 FETCH 1 BODY[]\r\np4 LOGOUT\r\n",
        login_line("p1")
    );
    c.send(burst.as_bytes()).await;
    let ok = c.read_line_str().await;
    assert!(ok.starts_with("p1 OK"), "{ok}");
    let select = c.read_until_tagged("p2").await;
    assert!(select.last().unwrap().starts_with(b"p2 OK"));
    let fetch = c.read_until_tagged("p3").await;
    assert!(fetch.last().unwrap().starts_with(b"p3 OK"));
    assert!(fetch.iter().any(|l| l.windows(4).any(|w| w == b"body")));
    c.read_until_tagged("p4").await;
    let after = server.state.commands_after_auth();
    assert_eq!(
        after,
        vec!["p2 SELECT INBOX", "p3 FETCH 1 BODY[]", "p4 LOGOUT"],
        "{after:?}"
    );
    let before = server.state.commands_before_auth();
    assert!(
        before
            .iter()
            .all(|c| !c.starts_with("p2") && !c.starts_with("p3") && !c.starts_with("p4")),
        "{before:?}"
    );
}

#[tokio::test]
async fn a_ten_mib_message_is_fetched_and_appended_byte_exact() {
    let big = message(10 * 1024 * 1024, 7);
    let (proxy, server) = proxy_with(ImapOpts {
        messages: vec![big.clone()],
        ..ImapOpts::default()
    })
    .await;
    let mut c = connect(&proxy).await;
    login(&mut c).await;
    c.send(b"s SELECT INBOX\r\n").await;
    c.read_until_tagged("s").await;
    c.send(b"f FETCH 1 BODY[]\r\n").await;
    let head = c.read_line_str().await;
    assert_eq!(head, format!("* 1 FETCH (BODY[] {{{}}}", big.len()));
    let body = c.read_exact(big.len()).await;
    assert!(
        body == big,
        "the fetched message differs from the stored one"
    );
    c.expect(b")").await;
    c.expect(b"f OK FETCH completed.").await;

    let up = message(10 * 1024 * 1024 + 3, 8);
    c.send(format!("ap APPEND INBOX {{{}}}\r\n", up.len()).as_bytes())
        .await;
    c.expect_prefix(b"+").await;
    c.send(&up).await;
    c.send(b"\r\n").await;
    let done = c.read_until_tagged("ap").await;
    assert!(done.last().unwrap().starts_with(b"ap OK"));
    assert!(
        server.state.appended() == vec![up],
        "the appended message differs"
    );
}

#[tokio::test]
async fn fifty_concurrent_logins_share_one_refresh() {
    let (proxy, server) = proxy_with(ImapOpts::default()).await;
    // Slow enough that every login arrives while the refresh is in flight.
    proxy.tokens.state.set_delay(Duration::from_millis(300));
    let addr = proxy.addr(0);
    let mut tasks = Vec::new();
    for i in 0..50 {
        tasks.push(tokio::spawn(async move {
            let mut c = TestClient::connect(addr).await;
            c.read_line().await;
            c.send(format!("t{i} LOGIN {USER} {PASSWORD}\r\n").as_bytes())
                .await;
            let line = c.read_line_str().await;
            assert!(line.starts_with(&format!("t{i} OK")), "{line}");
        }));
    }
    for t in tasks {
        t.await.expect("login task");
    }
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
    assert_eq!(server.state.auth_successes(), 50);
}

#[tokio::test]
async fn the_rotated_refresh_token_is_on_disk() {
    let (proxy, _server) = proxy_with(ImapOpts::default()).await;
    // Every refresh token works once: a restart can only refresh if the
    // rotated one was saved.
    proxy.tokens.state.set_single_use_refresh_tokens(true);
    let mut c = connect(&proxy).await;
    login(&mut c).await;
    drop(c);
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
    let Proxy {
        pki,
        tokens,
        state_dir,
        running,
    } = proxy;
    running.shutdown().await;
    // A margin longer than any token's life forces a refresh at once.
    let server2 = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server2.addr)],
        "refresh_margin_secs = 100000",
    );
    let running = start(&text).await;
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.read_line().await;
    login(&mut c).await;
    assert_eq!(tokens.state.requests(GRANT_REFRESH), 2);
    assert_eq!(server2.state.auth_successes(), 1);
}

#[tokio::test]
async fn upstream_starttls_and_no_sasl_ir_work() {
    for opts in [
        ImapOpts {
            tls: Tls::StartTls,
            greeting_capabilities: true,
            ..ImapOpts::default()
        },
        ImapOpts {
            sasl_ir: false,
            ..ImapOpts::default()
        },
    ] {
        let (proxy, server) = proxy_with(opts).await;
        let mut c = TestClient::connect(proxy.addr(0)).await;
        let greeting = c.read_line_str().await;
        assert!(
            !greeting.contains("STARTTLS") && !greeting.contains("LOGINDISABLED"),
            "{greeting}"
        );
        login(&mut c).await;
        assert_eq!(server.state.auth_successes(), 1);
    }
}

#[tokio::test]
async fn local_refusals_never_reach_the_network() {
    let (proxy, server) = proxy_with(ImapOpts::default()).await;
    let mut c = connect(&proxy).await;
    c.send(b"u1 LOGIN nobody@example.test pw\r\n").await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("u1 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert!(line.contains("nobody@example.test"), "{line}");
    c.send(format!("u2 LOGIN {USER} \"\"\r\n").as_bytes()).await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("u2 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert!(line.contains("empty"), "{line}");
    assert_eq!(proxy.tokens.state.total_requests(), 0);
    assert_eq!(server.state.auth_attempts(), 0);
}

#[tokio::test]
async fn sign_in_needed_says_how() {
    // No tokens at all.
    let (proxy, _server) = proxy_with(ImapOpts::default()).await;
    xoauth2_proxy::auth::vault::TokenStore::new(proxy.state_dir.path())
        .remove(USER)
        .unwrap();
    let mut c = connect(&proxy).await;
    c.send(login_line("n1").as_bytes()).await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("n1 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert!(line.contains("xoauth2-proxy authorize"), "{line}");

    // A revoked refresh token.
    let (proxy, _server) = proxy_with(ImapOpts::default()).await;
    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    let mut c = connect(&proxy).await;
    c.send(login_line("n2").as_bytes()).await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("n2 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert!(
        line.contains("expired or was revoked") && line.contains("authorize"),
        "{line}"
    );
}

#[tokio::test]
async fn a_token_endpoint_that_is_down_gives_unavailable() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().unwrap();
    seed_tokens(state_dir.path(), &tokens);
    let dead = format!("http://{}", dead_addr().await);
    let running = start(&config_text(
        &pki,
        state_dir.path(),
        &dead,
        &[imap(server.addr)],
        "",
    ))
    .await;
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.read_line().await;
    c.send(login_line("d1").as_bytes()).await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("d1 NO [UNAVAILABLE] "), "{line}");
    // Which address and what error is in the log; the client hears the gist.
    assert!(line.contains("token endpoint"), "{line}");
    // The connection stays usable.
    c.send(b"d2 NOOP\r\n").await;
    c.expect(b"d2 OK NOOP completed").await;

    // HTTP 503 from the endpoint: the same class.
    let (proxy, _server) = proxy_with(ImapOpts::default()).await;
    proxy.tokens.state.set_mode(Mode::Status(503));
    let mut c = connect(&proxy).await;
    c.send(login_line("d3").as_bytes()).await;
    let line = c.read_line_str().await;
    // The status is in the log; the client hears to try again.
    assert!(
        line.starts_with("d3 NO [UNAVAILABLE] ") && line.contains("try again later"),
        "{line}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_reported_at_login() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let state_dir = tempfile::tempdir().unwrap();
    seed_tokens(state_dir.path(), &tokens);
    let dead = dead_addr().await;
    let running = start(&config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(dead)],
        "",
    ))
    .await;
    let mut c = TestClient::connect(running.addrs[0]).await;
    let greeting = c.read_line_str().await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 ") && greeting.contains("AUTH=PLAIN"),
        "{greeting}"
    );
    c.send(login_line("x1").as_bytes()).await;
    let line = c.read_line_str().await;
    assert!(
        line.starts_with("x1 NO [UNAVAILABLE] cannot reach "),
        "{line}"
    );
}

#[tokio::test]
async fn a_line_over_the_cap_is_refused_not_hung() {
    let (proxy, _server) = proxy_with(ImapOpts::default()).await;
    let mut c = connect(&proxy).await;
    c.send(&vec![b'a'; 9000]).await;
    let line = c.read_line_str().await;
    assert!(
        line.starts_with("* BYE [TOOBIG]") && line.contains("8192"),
        "{line}"
    );
    c.expect_eof().await;
}

#[tokio::test]
async fn a_silent_client_is_closed_at_the_preauth_deadline() {
    let (proxy, _server) = proxy_with_extra(ImapOpts::default(), "preauth_timeout_secs = 1").await;
    let mut c = connect(&proxy).await;
    c.set_timeout(Duration::from_secs(5));
    let line = c.read_line_str().await;
    assert!(line.starts_with("* BYE "), "{line}");
    c.expect_eof().await;
}
