//! POP3 through the proxy, end to end, against a fake that behaves like
//! outlook.office365.com:995 (implicit TLS, XOAUTH2 only).

mod harness;
mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{PASSWORD, Proxy, config_text, dead_addr, pop3, seed_tokens, start};
use support::token_server::GRANT_REFRESH;
use support::*;

async fn proxy_with(opts: Pop3Opts) -> (Proxy, FakePop3Server) {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakePop3Server::start(&pki, tokens.state.clone(), opts).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[pop3(server.addr)],
        "",
    );
    (Proxy::start(pki, tokens, state_dir, &text).await, server)
}

async fn connect(proxy: &Proxy) -> TestClient {
    let mut c = TestClient::connect(proxy.addr(0)).await;
    c.expect(pop3_server::GREETING.as_bytes()).await;
    c
}

#[tokio::test]
async fn capa_is_rewritten_and_pre_login_commands_answer() {
    let (proxy, _server) = proxy_with(Pop3Opts::default()).await;
    let mut c = connect(&proxy).await;
    c.send(b"CAPA\r\n").await;
    let capa = c.read_dot_terminated().await;
    assert_eq!(
        String::from_utf8_lossy(&capa),
        "+OK Capability list follows\r\nTOP\r\nUIDL\r\nSASL PLAIN LOGIN\r\nUSER\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\n"
    );
    c.send(b"AUTH\r\n").await;
    let list = c.read_dot_terminated().await;
    assert_eq!(String::from_utf8_lossy(&list), "+OK\r\nPLAIN\r\nLOGIN\r\n");
    c.send(b"APOP user@example.test 0123456789abcdef0123456789abcdef\r\n")
        .await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("-ERR ") && line.contains("APOP"), "{line}");
    c.send(b"STAT\r\n").await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("-ERR "), "{line}");
    c.send(b"AUTH LOGIN\r\n").await;
    c.expect(b"+ VXNlcm5hbWU6").await;
    c.send(b"*\r\n").await;
    c.expect_prefix(b"-ERR").await;
    c.send(b"QUIT\r\n").await;
    c.expect_prefix(b"+OK").await;
    c.expect_eof().await;
}

#[tokio::test]
async fn every_login_form_retrieves_a_25_mib_message_byte_exact() {
    let small = b"Subject: small\r\n\r\n.leading dot\r\n".to_vec();
    let big = message(25 * 1024 * 1024, 11);
    let (proxy, server) = proxy_with(Pop3Opts {
        messages: vec![small.clone(), big.clone()],
        ..Pop3Opts::default()
    })
    .await;
    let plain = B64.encode(format!("\0{USER}\0{PASSWORD}"));
    let forms: Vec<(&str, Vec<(String, &str)>)> = vec![
        (
            "USER/PASS",
            vec![
                (format!("USER {USER}\r\n"), "+OK"),
                (format!("PASS {PASSWORD}\r\n"), ""),
            ],
        ),
        (
            "AUTH PLAIN inline",
            vec![(format!("AUTH PLAIN {plain}\r\n"), "")],
        ),
        (
            "AUTH PLAIN via +",
            vec![
                ("AUTH PLAIN\r\n".into(), "+ "),
                (format!("{plain}\r\n"), ""),
            ],
        ),
        (
            "AUTH LOGIN",
            vec![
                ("AUTH LOGIN\r\n".into(), "+ VXNlcm5hbWU6"),
                (format!("{}\r\n", B64.encode(USER)), "+ UGFzc3dvcmQ6"),
                (format!("{}\r\n", B64.encode(PASSWORD)), ""),
            ],
        ),
    ];
    for (name, steps) in &forms {
        let mut c = connect(&proxy).await;
        for (send, expect) in steps {
            c.send(send.as_bytes()).await;
            if !expect.is_empty() {
                c.expect_prefix(expect.as_bytes()).await;
            }
        }
        c.expect(b"+OK User successfully authenticated.").await;
        c.send(b"RETR 1\r\n").await;
        c.expect_prefix(b"+OK").await;
        assert_eq!(c.read_dot_terminated().await, small, "{name}");
        c.send(b"QUIT\r\n").await;
        c.expect_prefix(b"+OK").await;
    }
    let mut c = connect(&proxy).await;
    c.send(format!("AUTH PLAIN {plain}\r\nRETR 2\r\n").as_bytes())
        .await;
    c.expect(b"+OK User successfully authenticated.").await;
    c.expect_prefix(b"+OK").await;
    assert!(
        c.read_dot_terminated().await == big,
        "the 25 MiB message differs"
    );
    assert_eq!(server.state.auth_successes(), 5);
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
    assert!(
        server
            .state
            .commands_after_auth()
            .contains(&"RETR 2".to_string())
    );
}

#[tokio::test]
async fn failures_get_the_right_codes() {
    // The server refuses the token after an error challenge: its -ERR passes through.
    let (proxy, _server) = proxy_with(Pop3Opts {
        user: "other@example.test".into(),
        ..Pop3Opts::default()
    })
    .await;
    let mut c = connect(&proxy).await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    c.expect(b"-ERR [AUTH] Authentication failed.").await;
    // A retry is possible on the same connection.
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    c.expect(b"-ERR [AUTH] Authentication failed.").await;

    // Local refusals.
    c.send(b"USER nobody@example.test\r\nPASS pw\r\n").await;
    c.expect_prefix(b"+OK").await;
    let line = c.read_line_str().await;
    assert!(
        line.starts_with("-ERR [AUTH] ") && line.contains("nobody@example.test"),
        "{line}"
    );

    // Sign-in needed.
    let (proxy, _server) = proxy_with(Pop3Opts::default()).await;
    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    let mut c = connect(&proxy).await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    let line = c.read_line_str().await;
    assert!(
        line.starts_with("-ERR [AUTH] ") && line.contains("authorize"),
        "{line}"
    );

    // The token endpoint is down.
    proxy.tokens.state.set_mode(Mode::Status(500));
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    let line = c.read_line_str().await;
    // The status is in the log; the client hears to try again.
    assert!(
        line.starts_with("-ERR [SYS/TEMP] ") && line.contains("try again later"),
        "{line}"
    );
}

#[tokio::test]
async fn an_unreachable_upstream_is_reported_at_login() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let state_dir = tempfile::tempdir().unwrap();
    seed_tokens(state_dir.path(), &tokens);
    let running = start(&config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[pop3(dead_addr().await)],
        "",
    ))
    .await;
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.expect(b"+OK xoauth2-proxy ready").await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    let line = c.read_line_str().await;
    assert!(line.starts_with("-ERR [SYS/TEMP] cannot reach "), "{line}");
}
