//! SMTP submission through the proxy, end to end, against a fake that
//! behaves like smtp.office365.com:587 (plaintext, STARTTLS, XOAUTH2 only).

mod harness;
mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{PASSWORD, Proxy, config_text, dead_addr, seed_tokens, smtp, start};
use support::token_server::GRANT_REFRESH;
use support::*;

async fn proxy_with(opts: SmtpOpts) -> (Proxy, FakeSmtpServer) {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeSmtpServer::start(&pki, tokens.state.clone(), opts).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[smtp(server.addr)],
        "",
    );
    (Proxy::start(pki, tokens, state_dir, &text).await, server)
}

const EHLO_REPLY: &[&str] = &[
    "250-fake.office365.test Hello [127.0.0.1]",
    "250-SIZE 157286400",
    "250-PIPELINING",
    "250-DSN",
    "250-ENHANCEDSTATUSCODES",
    "250-AUTH PLAIN LOGIN",
    "250-8BITMIME",
    "250-BINARYMIME",
    "250-CHUNKING",
    "250 SMTPUTF8",
];

/// Connects, checks the greeting, sends EHLO and checks the rewritten reply.
async fn greeted(proxy: &Proxy) -> TestClient {
    let mut c = TestClient::connect(proxy.addr(0)).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO client.example\r\n").await;
    for line in EHLO_REPLY {
        c.expect(line.as_bytes()).await;
    }
    c
}

fn plain_ir() -> String {
    B64.encode(format!("\0{USER}\0{PASSWORD}"))
}

async fn send_message(c: &mut TestClient, body: &[u8]) {
    c.send(format!("MAIL FROM:<{USER}>\r\n").as_bytes()).await;
    c.expect_smtp(250).await;
    c.send(b"RCPT TO:<bob@example.test>\r\n").await;
    c.expect_smtp(250).await;
    c.send(b"DATA\r\n").await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(body)).await;
    c.expect_smtp(250).await;
}

#[tokio::test]
async fn every_auth_form_works_and_the_message_arrives() {
    let (proxy, server) = proxy_with(SmtpOpts::default()).await;
    let user64 = B64.encode(USER);
    let pass64 = B64.encode(PASSWORD);
    let forms: Vec<(&str, Vec<(String, &str)>)> = vec![
        (
            "PLAIN inline",
            vec![(format!("AUTH PLAIN {}\r\n", plain_ir()), "")],
        ),
        (
            "PLAIN via 334",
            vec![
                ("AUTH PLAIN\r\n".into(), "334 "),
                (format!("{}\r\n", plain_ir()), ""),
            ],
        ),
        (
            "LOGIN",
            vec![
                ("AUTH LOGIN\r\n".into(), "334 VXNlcm5hbWU6"),
                (format!("{user64}\r\n"), "334 UGFzc3dvcmQ6"),
                (format!("{pass64}\r\n"), ""),
            ],
        ),
        (
            "LOGIN with the user name inline",
            vec![
                (format!("AUTH LOGIN {user64}\r\n"), "334 UGFzc3dvcmQ6"),
                (format!("{pass64}\r\n"), ""),
            ],
        ),
    ];
    for (i, (name, steps)) in forms.iter().enumerate() {
        let mut c = greeted(&proxy).await;
        for (send, challenge) in steps {
            c.send(send.as_bytes()).await;
            if !challenge.is_empty() {
                c.expect(challenge.as_bytes()).await;
            }
        }
        c.expect(smtp_server::AUTH_OK.as_bytes()).await;
        let body = format!("Subject: form {i}\r\n\r\n{name}\r\n").into_bytes();
        send_message(&mut c, &body).await;
        c.send(b"QUIT\r\n").await;
        c.expect_smtp(221).await;
        assert_eq!(server.state.messages().last().unwrap(), &body, "{name}");
    }
    assert_eq!(server.state.auth_successes(), 4);
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
}

#[tokio::test]
async fn before_login_only_the_session_commands_work() {
    let (proxy, server) = proxy_with(SmtpOpts::default()).await;
    let mut c = greeted(&proxy).await;
    for (cmd, reply) in [
        ("MAIL FROM:<a@b.c>", "530 5.7.0 Authentication required"),
        ("NOOP", "250 2.0.0 OK"),
        ("RSET", "250 2.0.0 OK"),
        (
            "AUTH XOAUTH2 abc",
            "504 5.5.4 Unrecognized authentication type",
        ),
    ] {
        c.send(format!("{cmd}\r\n").as_bytes()).await;
        let line = c.read_line_str().await;
        assert!(line.starts_with(reply), "{cmd}: {line}");
    }
    c.send(b"AUTH LOGIN\r\n").await;
    c.expect(b"334 VXNlcm5hbWU6").await;
    c.send(b"*\r\n").await;
    c.expect(b"501 5.7.0 Authentication cancelled").await;
    c.send(b"QUIT\r\n").await;
    c.expect(b"221 2.0.0 Bye").await;
    c.expect_eof().await;
    assert!(server.state.commands_after_auth().is_empty());
    assert!(
        server
            .state
            .command_lines()
            .iter()
            .all(|l| !l.starts_with("MAIL"))
    );
}

#[tokio::test]
async fn commands_pipelined_after_auth_are_held_until_235() {
    let (proxy, server) = proxy_with(SmtpOpts::default()).await;
    let mut c = greeted(&proxy).await;
    let body = b"Subject: pipelined\r\n\r\nhello\r\n";
    let burst = format!(
        "AUTH PLAIN {}\r\nMAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n",
        plain_ir()
    );
    c.send(burst.as_bytes()).await;
    c.expect(smtp_server::AUTH_OK.as_bytes()).await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(body)).await;
    c.expect_smtp(250).await;
    assert_eq!(server.state.messages(), vec![body.to_vec()]);
    let after = server.state.commands_after_auth();
    assert_eq!(after[0], format!("MAIL FROM:<{USER}>"), "{after:?}");
}

#[tokio::test]
async fn a_25_mib_message_and_a_bdat_transfer_pass_byte_exact() {
    let (proxy, server) = proxy_with(SmtpOpts::default()).await;
    let mut c = greeted(&proxy).await;
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    c.expect(smtp_server::AUTH_OK.as_bytes()).await;
    let big = message(25 * 1024 * 1024, 3);
    send_message(&mut c, &big).await;
    assert!(
        server.state.messages()[0] == big,
        "the DATA message differs"
    );

    // CHUNKING: binary bytes, no dot-stuffing.
    let chunk1: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let chunk2 = b"\r\n.\r\nend".to_vec();
    c.send(format!("MAIL FROM:<{USER}> BODY=BINARYMIME\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.send(b"RCPT TO:<bob@example.test>\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("BDAT {}\r\n", chunk1.len()).as_bytes())
        .await;
    c.send(&chunk1).await;
    c.expect_smtp(250).await;
    c.send(format!("BDAT {} LAST\r\n", chunk2.len()).as_bytes())
        .await;
    c.send(&chunk2).await;
    c.expect_smtp(250).await;
    let received = server.state.received();
    let last = received.last().unwrap();
    assert!(last.bdat);
    assert!(
        last.body == [chunk1, chunk2].concat(),
        "the BDAT message differs"
    );
}

#[tokio::test]
async fn plaintext_injected_with_the_upstream_starttls_reply_is_discarded() {
    let (proxy, server) = proxy_with(SmtpOpts {
        inject_after_starttls: Some(b"250-injected.example\r\n250 AUTH PLAIN\r\n".to_vec()),
        ..SmtpOpts::default()
    })
    .await;
    // The EHLO the client sees is the real post-TLS one, not the injected lines.
    let mut c = greeted(&proxy).await;
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    c.expect(smtp_server::AUTH_OK.as_bytes()).await;
    assert_eq!(server.state.auth_successes(), 1);
}

#[tokio::test]
async fn failures_get_the_right_codes() {
    // The server refuses the token: its reply passes through, the session stays usable.
    let (proxy, _server) = proxy_with(SmtpOpts {
        user: "other@example.test".into(),
        ..SmtpOpts::default()
    })
    .await;
    let mut c = greeted(&proxy).await;
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    c.expect(smtp_server::AUTH_FAILED.as_bytes()).await;
    c.send(b"NOOP\r\n").await;
    c.expect_smtp(250).await;

    // Dovecot-style error challenge first: the proxy answers it, the client sees the 535.
    let (proxy, _server) = proxy_with(SmtpOpts {
        user: "other@example.test".into(),
        error_challenge: true,
        ..SmtpOpts::default()
    })
    .await;
    let mut c = greeted(&proxy).await;
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    c.expect(smtp_server::AUTH_FAILED.as_bytes()).await;

    // SMTP AUTH disabled for the tenant: passed on as is.
    let (proxy, _server) = proxy_with(SmtpOpts {
        auth_reply: SmtpAuthReply::TenantDisabled,
        ..SmtpOpts::default()
    })
    .await;
    let mut c = greeted(&proxy).await;
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    c.expect(smtp_server::TENANT_DISABLED.as_bytes()).await;

    // Local refusals: unknown user, empty password.
    let mut c = greeted(&proxy).await;
    c.send(format!("AUTH PLAIN {}\r\n", B64.encode("\0nobody@example.test\0pw")).as_bytes())
        .await;
    let line = c.read_line_str().await;
    assert!(
        line.starts_with("535 5.7.8 ") && line.contains("nobody@example.test"),
        "{line}"
    );
    c.send(format!("AUTH PLAIN {}\r\n", B64.encode(format!("\0{USER}\0"))).as_bytes())
        .await;
    let line = c.read_line_str().await;
    assert!(
        line.starts_with("535 5.7.8 ") && line.contains("empty"),
        "{line}"
    );

    // Sign-in needed (a fresh proxy: nothing cached).
    let (proxy, _server) = proxy_with(SmtpOpts::default()).await;
    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    let mut c = greeted(&proxy).await;
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    let line = c.read_line_str().await;
    assert!(
        line.starts_with("535 5.7.8 ") && line.contains("authorize"),
        "{line}"
    );
}

#[tokio::test]
async fn an_unreachable_token_endpoint_or_upstream_gives_454() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeSmtpServer::start(&pki, tokens.state.clone(), SmtpOpts::default()).await;
    let state_dir = tempfile::tempdir().unwrap();
    seed_tokens(state_dir.path(), &tokens);
    let dead_tokens = format!("http://{}", dead_addr().await);
    let running = start(&config_text(
        &pki,
        state_dir.path(),
        &dead_tokens,
        &[smtp(server.addr)],
        "",
    ))
    .await;
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO x\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    let line = c.read_line_str().await;
    assert!(
        line.starts_with("454 4.7.0 ") && line.contains("token endpoint"),
        "{line}"
    );

    let running = start(&config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[smtp(dead_addr().await)],
        "",
    ))
    .await;
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.expect(b"220 xoauth2-proxy ESMTP ready").await;
    c.send(b"EHLO x\r\n").await;
    let reply = c.expect_smtp(250).await;
    assert!(
        reply
            .iter()
            .any(|l| l.windows(16).any(|w| w == b"AUTH PLAIN LOGIN"))
    );
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("454 4.7.0 cannot reach "), "{line}");
}

/// Office 365's SMTP AUTH refuses `user=<shared mailbox>`: an account with
/// `mailbox` signs in as the delegate itself (the fake accepts only
/// `user=` [`USER`]) and sends as the shared address (Send As).
#[tokio::test]
async fn a_shared_mailbox_account_signs_in_to_smtp_as_the_delegate() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeSmtpServer::start(&pki, tokens.state.clone(), SmtpOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let mut text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[smtp(server.addr)],
        "",
    );
    text.push_str("mailbox = \"info@example.test\"\n");
    let proxy = Proxy {
        running: start(&text).await,
        pki,
        tokens,
        state_dir,
    };
    let mut c = greeted(&proxy).await;
    c.send(format!("AUTH PLAIN {}\r\n", plain_ir()).as_bytes())
        .await;
    c.expect_smtp(235).await;
    c.send(b"MAIL FROM:<info@example.test>\r\n").await;
    c.expect_smtp(250).await;
}
