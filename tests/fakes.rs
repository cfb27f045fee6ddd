//! Self-tests of the hermetic fakes in `tests/support/`, driven by `TestClient` directly.

mod support;

use std::sync::Arc;

use support::token_server::{GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE_CODE, GRANT_REFRESH};
use support::*;

async fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, serde_json::Value) {
    let body: Vec<String> = form
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    let body = body.join("&");
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("URL with a path");
    let addr = host.parse().expect("host:port");
    let mut client = TestClient::connect(addr).await;
    let request = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    client.send(request.as_bytes()).await;
    let response = client.read_to_end().await;
    let text = String::from_utf8(response).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP head and body");
    let status: u16 = head
        .split(' ')
        .nth(1)
        .expect("status")
        .parse()
        .expect("numeric status");
    let json = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()));
    (status, json)
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn token_refresh_rotates_and_counts() {
    let server = FakeTokenServer::start().await;
    let st = server.state.clone();
    st.seed_refresh_token("seed-rt");
    let (status, json) = post_form(
        &server.token_url(),
        &[
            ("client_id", "cid"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "seed-rt"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["expires_in"], 3600);
    let at1 = json["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let rt1 = json["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    assert!(at1.starts_with("at-") && rt1.starts_with("rt-"), "{json}");
    assert!(st.is_valid_access_token(&at1));
    assert!(!st.is_valid_access_token("at-999"));

    // The used refresh token is gone; the rotated one works and rotates again.
    let (status, json) = post_form(
        &server.token_url(),
        &[
            ("client_id", "cid"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "seed-rt"),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json["error"], "invalid_grant");
    assert!(
        json["error_description"]
            .as_str()
            .unwrap_or_default()
            .starts_with("AADSTS70000")
    );
    let (status, json) = post_form(
        &format!("{}/common/oauth2/v2.0/token", server.url()),
        &[
            ("client_id", "cid"),
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt1),
        ],
    )
    .await;
    assert_eq!(status, 200, "{json}");
    let rt2 = json["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    assert_ne!(rt1, rt2);
    assert_eq!(st.latest_refresh_token().as_deref(), Some(rt2.as_str()));
    assert_eq!(st.requests(GRANT_REFRESH), 3);
    assert_eq!(st.total_requests(), 3);
    assert_eq!(st.last_form().expect("a form")["refresh_token"], rt1);

    // Missing client_id, modes, revocation.
    let (status, json) = post_form(
        &server.token_url(),
        &[("grant_type", "refresh_token"), ("refresh_token", &rt2)],
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("invalid_request"))
    );
    st.set_mode(Mode::TooManyRequests {
        retry_after_secs: 7,
    });
    let (status, _) = post_form(
        &server.token_url(),
        &[("client_id", "c"), ("grant_type", "refresh_token")],
    )
    .await;
    assert_eq!(status, 429);
    st.set_mode(Mode::Status(503));
    let (status, body) = post_form(
        &server.token_url(),
        &[("client_id", "c"), ("grant_type", "refresh_token")],
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        body.as_str().unwrap_or_default().contains("<html>"),
        "{body}"
    );
    st.set_mode(Mode::MalformedJson);
    let (status, body) = post_form(
        &server.token_url(),
        &[("client_id", "c"), ("grant_type", "refresh_token")],
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.is_string(), "malformed JSON must not parse: {body}");
    st.set_mode(Mode::NoExpiresIn);
    let (status, json) = post_form(
        &server.token_url(),
        &[
            ("client_id", "cid"),
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt2),
        ],
    )
    .await;
    assert_eq!(status, 200);
    assert!(json.get("expires_in").is_none(), "{json}");
    st.set_mode(Mode::Normal);
    st.revoke_all();
    assert!(!st.is_valid_access_token(&at1));
    let rt3 = st.latest_refresh_token().expect("rt3");
    let (status, json) = post_form(
        &server.token_url(),
        &[
            ("client_id", "cid"),
            ("grant_type", "refresh_token"),
            ("refresh_token", &rt3),
        ],
    )
    .await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("invalid_grant"))
    );

    // Client credentials: an access token, no refresh token.
    let (status, json) = post_form(
        &server.token_url(),
        &[
            ("client_id", "cid"),
            ("client_secret", "s"),
            ("grant_type", "client_credentials"),
            ("scope", "https://outlook.office365.com/.default"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{json}");
    assert!(json.get("refresh_token").is_none());
    assert_eq!(json["scope"], "https://outlook.office365.com/.default");
    assert_eq!(st.requests(GRANT_CLIENT_CREDENTIALS), 1);

    // Lifetime 0: issued already expired.
    st.set_access_token_lifetime(0);
    let at = st.issue_access_token();
    assert!(!st.is_valid_access_token(&at));
}

#[tokio::test]
async fn device_code_pending_then_tokens() {
    let server = FakeTokenServer::start().await;
    let st = server.state.clone();
    st.set_pending_polls(2);
    let (status, json) = post_form(
        &server.devicecode_url(),
        &[
            ("client_id", "cid"),
            (
                "scope",
                "offline_access https://outlook.office.com/IMAP.AccessAsUser.All",
            ),
        ],
    )
    .await;
    assert_eq!(status, 200, "{json}");
    for key in ["device_code", "user_code", "verification_uri", "message"] {
        assert!(json[key].is_string(), "{key} missing in {json}");
    }
    assert_eq!(json["interval"], 1);
    assert_eq!(json["expires_in"], 900);
    let code = json["device_code"]
        .as_str()
        .expect("device_code")
        .to_owned();
    let poll = [
        ("client_id", "cid"),
        ("grant_type", GRANT_DEVICE_CODE),
        ("device_code", code.as_str()),
    ];
    for _ in 0..2 {
        let (status, json) = post_form(&server.token_url(), &poll).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (400, Some("authorization_pending"))
        );
    }
    let (status, json) = post_form(&server.token_url(), &poll).await;
    assert_eq!(status, 200, "{json}");
    assert_eq!(json["token_type"], "Bearer");
    assert!(
        json["refresh_token"].is_string()
            && json["expires_in"].is_number()
            && json["scope"].is_string()
    );
    assert!(st.is_valid_access_token(json["access_token"].as_str().expect("access_token")));
    assert_eq!(st.requests(GRANT_DEVICE_CODE), 3);
    assert_eq!(st.devicecode_requests(), 1);
    let (status, json) = post_form(&server.token_url(), &poll).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (400, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn token_server_overlaps_concurrent_callers() {
    let server = FakeTokenServer::start().await;
    server
        .state
        .set_delay(std::time::Duration::from_millis(200));
    let url = server.token_url();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            post_form(
                &url,
                &[
                    ("client_id", "c"),
                    ("client_secret", "s"),
                    ("grant_type", "client_credentials"),
                ],
            )
            .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").0, 200);
    }
    assert!(
        server.state.max_in_flight() > 10,
        "max in flight {}",
        server.state.max_in_flight()
    );
}

#[test]
fn message_is_exact_and_exercises_dots_and_8bit() {
    for size in [0, 1, 2, 3, 50, 199, 200, 300, 301, 302, 1000, 65_537] {
        let m = message(size, 7);
        assert_eq!(m.len(), size);
        assert_eq!(m, message(size, 7));
        if size >= 2 {
            assert!(m.ends_with(b"\r\n"), "size {size}");
        }
    }
    let m = message(100_000, 1);
    assert!(m.windows(3).any(|w| w == b"\n.\r"));
    assert!(m.windows(3).any(|w| w == b"\n.."));
    assert!(m.iter().any(|&b| b >= 0x80));
    assert!(
        m.split(|&b| b == b'\n')
            .all(|l| !l[..l.len().saturating_sub(1)].contains(&b'\r'))
    );
    assert_eq!(dot_unstuff(&dot_stuff(&m)), m);
}

async fn imap_setup(opts: ImapOpts) -> (TestPki, Arc<TokenState>, FakeImapServer) {
    let pki = TestPki::new();
    let tokens = Arc::new(TokenState::new());
    let server = FakeImapServer::start(&pki, tokens.clone(), opts).await;
    (pki, tokens, server)
}

#[tokio::test]
async fn imap_xoauth2_ok_and_error_challenge() {
    let (pki, tokens, server) = imap_setup(ImapOpts::default()).await;
    let mut c = TestClient::connect_tls(server.addr, pki.client_config.clone()).await;
    c.expect(b"* OK The Microsoft Exchange IMAP4 service is ready.")
        .await;
    c.send_line("a0 CAPABILITY").await;
    let caps = c.read_until_tagged("a0").await;
    assert_eq!(
        caps[0],
        b"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+\r\n"
    );
    c.send_line("a1 LOGIN user pass").await;
    c.expect(b"a1 NO [ALERT] Unsupported authentication mechanism.")
        .await;
    // Bad token with SASL-IR: error challenge, empty answer, tagged NO; still usable.
    c.send_line(&format!(
        "a2 AUTHENTICATE XOAUTH2 {}",
        xoauth2(USER, "at-bogus")
    ))
    .await;
    c.expect(format!("+ {}", error_challenge_b64()).as_bytes())
        .await;
    c.send_line("").await;
    c.expect(b"a2 NO [AUTHENTICATIONFAILED] Authentication failed.")
        .await;
    // Right token, wrong user.
    let token = tokens.issue_access_token();
    c.send_line(&format!(
        "a3 AUTHENTICATE XOAUTH2 {}",
        xoauth2("other@example.test", &token)
    ))
    .await;
    c.expect_prefix(b"+ ").await;
    c.send_line("").await;
    c.expect_prefix(b"a3 NO").await;
    // Without SASL-IR.
    c.send_line("a4 AUTHENTICATE XOAUTH2").await;
    c.expect(b"+ ").await;
    c.send_line(&xoauth2(USER, &token)).await;
    c.expect_prefix(b"a4 OK [CAPABILITY IMAP4").await;
    c.send_line("a5 NOOP").await;
    c.expect(b"a5 OK NOOP completed.").await;
    c.send_line("a6 LOGOUT").await;
    c.expect_prefix(b"* BYE").await;
    c.expect(b"a6 OK LOGOUT completed.").await;
    c.expect_eof().await;
    let commands = server.state.commands();
    assert_eq!(commands.iter().filter(|(auth, _)| !auth).count(), 5);
    assert_eq!(commands[4], (false, "a4 AUTHENTICATE XOAUTH2".to_owned()));
    assert_eq!(commands[5], (true, "a5 NOOP".to_owned()));
    assert_eq!(
        (server.state.auth_attempts(), server.state.auth_successes()),
        (3, 1)
    );
    assert_eq!(
        server.state.presented_tokens(),
        vec!["at-bogus".to_owned(), token.clone(), token]
    );
    server
        .state
        .wait_until("the connection is closed", |s| s.active_connections() == 0)
        .await;
    assert_eq!(server.state.connections(), 1);
}

#[tokio::test]
async fn imap_fetch_one_mib_byte_exact_and_append() {
    let big = message(1024 * 1024, 42);
    let (pki, tokens, server) = imap_setup(ImapOpts {
        messages: vec![message(500, 1), big.clone()],
        ..Default::default()
    })
    .await;
    let mut c = TestClient::connect_tls(server.addr, pki.client_config.clone()).await;
    c.read_line().await;
    c.send_line(&format!(
        "t1 AUTHENTICATE XOAUTH2 {}",
        xoauth2(USER, &tokens.issue_access_token())
    ))
    .await;
    c.expect_prefix(b"t1 OK").await;
    c.send_line("t2 SELECT INBOX").await;
    let sel = c.read_until_tagged("t2").await;
    assert!(sel.contains(&b"* 2 EXISTS\r\n".to_vec()), "{sel:?}");
    c.send_line("t3 FETCH 2 BODY[]").await;
    let resp = c.read_until_tagged("t3").await;
    assert_eq!(resp.len(), 2);
    let mut want = format!("* 2 FETCH (BODY[] {{{}}}\r\n", big.len()).into_bytes();
    want.extend_from_slice(&big);
    want.extend_from_slice(b")\r\n");
    assert!(
        resp[0] == want,
        "FETCH response differs from the stored message"
    );
    assert_eq!(resp[1], b"t3 OK FETCH completed.\r\n");
    c.send_line("t4 FETCH 1 RFC822").await;
    c.expect(b"* 1 FETCH (RFC822 {500}").await;
    assert_eq!(c.read_exact(500).await, message(500, 1));
    c.expect(b")").await;
    c.expect(b"t4 OK FETCH completed.").await;

    // APPEND with a synchronizing literal, then with LITERAL+.
    let m = message(3 * 1024 * 1024, 9);
    c.send_line(&format!("t5 APPEND INBOX (\\Seen) {{{}}}", m.len()))
        .await;
    c.expect_prefix(b"+ ").await;
    let mut data = m.clone();
    data.extend_from_slice(b"\r\n");
    c.send(&data).await;
    c.expect_prefix(b"t5 OK [APPENDUID").await;
    let mut data = b"t6 APPEND \"Sent Items\" {5+}\r\nhello\r\n".to_vec();
    data.extend_from_slice(b"t7 NOOP\r\n");
    c.send(&data).await;
    c.expect_prefix(b"t6 OK").await;
    c.expect(b"t7 OK NOOP completed.").await;
    assert_eq!(server.state.appended(), vec![m, b"hello".to_vec()]);
    assert_eq!(server.state.appended_to()[1].0, "Sent Items");
    c.send_line("t8 BOGUS").await;
    c.expect_prefix(b"t8 BAD").await;
}

#[tokio::test]
async fn imap_starttls_dovecot_greeting_and_not_connected_trap() {
    let opts = ImapOpts {
        tls: Tls::StartTls,
        greeting_capabilities: true,
        sasl_ir: false,
        ok_then_not_connected: true,
        ..Default::default()
    };
    let (pki, tokens, server) = imap_setup(opts).await;
    let mut c = TestClient::connect(server.addr).await;
    let greeting = c.expect_prefix(b"* OK [CAPABILITY IMAP4 IMAP4rev1 ").await;
    let greeting = String::from_utf8_lossy(&greeting).into_owned();
    assert!(
        greeting.contains(" STARTTLS LOGINDISABLED]") && !greeting.contains("SASL-IR"),
        "{greeting}"
    );
    c.send_line("s1 AUTHENTICATE XOAUTH2").await;
    c.expect_prefix(b"s1 NO [PRIVACYREQUIRED]").await;
    // Bytes pipelined behind STARTTLS are discarded by the server.
    c.send(b"s2 STARTTLS\r\ns3 NOOP\r\n").await;
    c.expect(b"s2 OK Begin TLS negotiation now.").await;
    c.starttls("localhost", pki.client_config.clone()).await;
    c.send_line("s4 CAPABILITY").await;
    let caps = c.read_until_tagged("s4").await;
    assert!(!String::from_utf8_lossy(&caps[0]).contains("STARTTLS"));
    let token = tokens.issue_access_token();
    c.send_line(&format!(
        "s5 AUTHENTICATE XOAUTH2 {}",
        xoauth2(USER, &token)
    ))
    .await;
    c.expect(b"s5 BAD Command Argument Error. 11").await;
    c.send_line("s6 AUTHENTICATE XOAUTH2").await;
    c.expect(b"+ ").await;
    c.send_line(&xoauth2(USER, &token)).await;
    c.expect_prefix(b"s6 OK").await;
    c.send_line("s7 SELECT INBOX").await;
    c.expect(b"s7 BAD User is authenticated but not connected.")
        .await;
    c.expect_prefix(b"* BYE").await;
    c.expect_eof().await;
    let lines = server.state.command_lines();
    assert!(!lines.iter().any(|l| l.contains("s3")), "{lines:?}");
    assert_eq!(
        server.state.commands_after_auth(),
        vec!["s7 SELECT INBOX".to_owned()]
    );
}

#[tokio::test]
async fn pop3_xoauth2_and_retr_byte_exact() {
    let pki = TestPki::new();
    let tokens = Arc::new(TokenState::new());
    let big = message(300_000, 5);
    let small = b".starts with a dot\r\n.\r\n..\r\nend\r\n".to_vec();
    let opts = Pop3Opts {
        messages: vec![small.clone(), big.clone()],
        ..Default::default()
    };
    let server = FakePop3Server::start(&pki, tokens.clone(), opts).await;
    let mut c = TestClient::connect_tls(server.addr, pki.client_config.clone()).await;
    c.expect(b"+OK The Microsoft Exchange POP3 service is ready.")
        .await;
    c.send_line("CAPA").await;
    c.expect(b"+OK").await;
    assert_eq!(
        c.read_dot_terminated().await,
        b"TOP\r\nUIDL\r\nSASL PLAIN XOAUTH2\r\nUSER\r\nRESP-CODES\r\n"
    );
    c.send_line("USER someone").await;
    c.expect(b"-ERR Command is not valid in this state.").await;
    c.send_line("STAT").await;
    c.expect_prefix(b"-ERR").await;
    // Bad token without an initial response: `+ `, then the error challenge, then -ERR.
    c.send_line("AUTH XOAUTH2").await;
    c.expect(b"+ ").await;
    c.send_line(&xoauth2(USER, "at-nope")).await;
    c.expect(format!("+ {}", error_challenge_b64()).as_bytes())
        .await;
    c.send_line("").await;
    c.expect(b"-ERR [AUTH] Authentication failed.").await;
    // Good token with an initial response.
    c.send_line(&format!(
        "AUTH XOAUTH2 {}",
        xoauth2(USER, &tokens.issue_access_token())
    ))
    .await;
    c.expect(b"+OK User successfully authenticated.").await;
    c.send_line("STAT").await;
    c.expect(format!("+OK 2 {}", small.len() + big.len()).as_bytes())
        .await;
    c.send_line("LIST").await;
    c.expect(b"+OK 2 messages").await;
    assert_eq!(
        c.read_dot_terminated().await,
        format!("1 {}\r\n2 {}\r\n", small.len(), big.len()).into_bytes()
    );
    for (n, msg) in [(1, &small), (2, &big)] {
        c.send_line(&format!("RETR {n}")).await;
        c.expect(format!("+OK {} octets", msg.len()).as_bytes())
            .await;
        assert!(
            c.read_dot_terminated().await == *msg,
            "RETR {n} differs after unstuffing"
        );
    }
    // The raw stuffing on the wire.
    c.send_line("RETR 1").await;
    c.read_line().await;
    let wire = b"..starts with a dot\r\n..\r\n...\r\nend\r\n.\r\n";
    assert_eq!(c.read_exact(wire.len()).await, wire);
    c.send_line("TOP 2 0").await;
    c.expect(b"+OK").await;
    let top = c.read_dot_terminated().await;
    assert!(top.ends_with(b"\r\n\r\n") && big.starts_with(&top));
    c.send_line("DELE 1").await;
    c.expect(b"+OK Marked for deletion.").await;
    c.send_line("RETR 1").await;
    c.expect_prefix(b"-ERR").await;
    c.send_line("NOOP").await;
    c.expect(b"+OK").await;
    c.send_line("QUIT").await;
    c.expect_prefix(b"+OK").await;
    c.expect_eof().await;
    assert_eq!(server.state.deleted(), vec![small]);
    assert_eq!(server.state.maildrop(), vec![big]);
    assert_eq!(
        (server.state.auth_attempts(), server.state.auth_successes()),
        (2, 1)
    );
    let before = server.state.commands_before_auth();
    assert_eq!(before.first().map(String::as_str), Some("CAPA"));
    assert_eq!(
        server
            .state
            .commands_after_auth()
            .last()
            .map(String::as_str),
        Some("QUIT")
    );

    // allow_initial_response = false refuses an initial response.
    let opts = Pop3Opts {
        allow_initial_response: false,
        ..Default::default()
    };
    let server = FakePop3Server::start(&pki, tokens.clone(), opts).await;
    let mut c = TestClient::connect_tls(server.addr, pki.client_config.clone()).await;
    c.read_line().await;
    c.send_line(&format!(
        "AUTH XOAUTH2 {}",
        xoauth2(USER, &tokens.issue_access_token())
    ))
    .await;
    c.expect_prefix(b"-ERR").await;
}

async fn smtp_to_auth(c: &mut TestClient, pki: &TestPki) {
    c.expect(b"220 fake.office365.test Microsoft ESMTP MAIL Service ready")
        .await;
    c.send_line("EHLO client.test").await;
    let ehlo = c.expect_smtp(250).await;
    let ehlo: Vec<String> = ehlo
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    assert_eq!(
        ehlo.first().map(String::as_str),
        Some("250-fake.office365.test Hello [127.0.0.1]\r\n")
    );
    assert!(ehlo.contains(&"250-STARTTLS\r\n".to_owned()), "{ehlo:?}");
    assert!(!ehlo.iter().any(|l| l.contains("AUTH")), "{ehlo:?}");
    assert_eq!(ehlo.last().map(String::as_str), Some("250 SMTPUTF8\r\n"));
    c.send_line("AUTH XOAUTH2").await;
    c.expect(b"530 5.7.57 Client not authenticated to send mail")
        .await;
    c.send_line("MAIL FROM:<a@b>").await;
    c.expect_smtp(530).await;
    // Pipelined junk behind STARTTLS is discarded by the server.
    c.send(b"STARTTLS\r\nNOOP\r\n").await;
    c.expect(b"220 2.0.0 SMTP server ready").await;
    c.starttls("localhost", pki.client_config.clone()).await;
    c.send_line("EHLO client.test").await;
    let ehlo = c.expect_smtp(250).await;
    assert!(ehlo.contains(&b"250-AUTH LOGIN XOAUTH2\r\n".to_vec()));
    assert!(!ehlo.contains(&b"250-STARTTLS\r\n".to_vec()));
}

#[tokio::test]
async fn smtp_starttls_auth_data_and_bdat_byte_exact() {
    let pki = TestPki::new();
    let tokens = Arc::new(TokenState::new());
    let server = FakeSmtpServer::start(&pki, tokens.clone(), SmtpOpts::default()).await;
    let mut c = TestClient::connect(server.addr).await;
    smtp_to_auth(&mut c, &pki).await;
    // Office style: a bad token gets 535 at once.
    c.send_line(&format!("AUTH XOAUTH2 {}", xoauth2(USER, "at-bad")))
        .await;
    c.expect(b"535 5.7.3 Authentication unsuccessful").await;
    c.send_line("AUTH XOAUTH2").await;
    c.expect(b"334 ").await;
    c.send_line(&xoauth2(USER, &tokens.issue_access_token()))
        .await;
    c.expect(b"235 2.7.0 Authentication successful").await;

    let body = message(2 * 1024 * 1024 + 3, 11);
    c.send(b"MAIL FROM:<user@example.test> SIZE=100\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
        .await;
    c.expect(b"250 2.1.0 Sender OK").await;
    c.expect(b"250 2.1.5 Recipient OK").await;
    c.expect(b"250 2.1.5 Recipient OK").await;
    c.expect_prefix(b"354 ").await;
    c.send(&dot_stuff(&body)).await;
    c.expect_prefix(b"250 2.6.0 ").await;

    let bdat_body = message(700_001, 12);
    let (one, two) = bdat_body.split_at(300_000);
    c.send_line("MAIL FROM:<>").await;
    c.expect_smtp(250).await;
    c.send_line("RCPT TO:<c@example.test>").await;
    c.expect_smtp(250).await;
    let mut data = format!("BDAT {}\r\n", one.len()).into_bytes();
    data.extend_from_slice(one);
    data.extend_from_slice(format!("BDAT {} LAST\r\n", two.len()).as_bytes());
    data.extend_from_slice(two);
    c.send(&data).await;
    c.expect_smtp(250).await;
    c.expect_prefix(b"250 2.6.0 ").await;
    c.send_line("RSET").await;
    c.expect_smtp(250).await;
    c.send_line("NOOP").await;
    c.expect_smtp(250).await;
    c.send_line("QUIT").await;
    c.expect_smtp(221).await;
    c.expect_eof().await;

    let received = server.state.received();
    assert_eq!(received.len(), 2);
    assert!(received[0].body == body, "DATA body differs");
    assert_eq!(received[0].from, "user@example.test");
    assert_eq!(
        received[0].to,
        vec!["a@example.test".to_owned(), "b@example.test".to_owned()]
    );
    assert!(!received[0].bdat);
    assert!(received[1].body == bdat_body && received[1].bdat && received[1].from.is_empty());
    assert_eq!(server.state.messages().len(), 2);
    let lines = server.state.command_lines();
    assert!(
        !lines.contains(&"NOOP".to_owned()) || lines.iter().filter(|l| *l == "NOOP").count() == 1,
        "{lines:?}"
    );
    assert_eq!(
        server
            .state
            .commands_before_auth()
            .iter()
            .filter(|l| l.starts_with("EHLO"))
            .count(),
        2
    );
    assert_eq!(
        server.state.commands_after_auth()[0],
        "MAIL FROM:<user@example.test> SIZE=100"
    );
}

#[tokio::test]
async fn smtp_error_challenge_and_override_replies() {
    let pki = TestPki::new();
    let tokens = Arc::new(TokenState::new());
    let opts = SmtpOpts {
        error_challenge: true,
        ..Default::default()
    };
    let server = FakeSmtpServer::start(&pki, tokens.clone(), opts).await;
    let mut c = TestClient::connect(server.addr).await;
    smtp_to_auth(&mut c, &pki).await;
    c.send_line(&format!("AUTH XOAUTH2 {}", xoauth2(USER, "at-bad")))
        .await;
    c.expect(format!("334 {}", error_challenge_b64()).as_bytes())
        .await;
    c.send_line("").await;
    c.expect(b"535 5.7.3 Authentication unsuccessful").await;
    c.send_line(&format!(
        "AUTH XOAUTH2 {}",
        xoauth2(USER, &tokens.issue_access_token())
    ))
    .await;
    c.expect(b"235 2.7.0 Authentication successful").await;
    assert_eq!(
        (server.state.auth_attempts(), server.state.auth_successes()),
        (2, 1)
    );

    for (reply, want) in [
        (SmtpAuthReply::TenantDisabled, smtp_server::TENANT_DISABLED),
        (SmtpAuthReply::ThreadLimit, smtp_server::THREAD_LIMIT),
    ] {
        let opts = SmtpOpts {
            auth_reply: reply,
            implicit_tls: true,
            ..Default::default()
        };
        let server = FakeSmtpServer::start(&pki, tokens.clone(), opts).await;
        let mut c = TestClient::connect_tls(server.addr, pki.client_config.clone()).await;
        c.expect_smtp(220).await;
        c.send_line("EHLO x").await;
        c.expect_smtp(250).await;
        c.send_line(&format!(
            "AUTH XOAUTH2 {}",
            xoauth2(USER, &tokens.issue_access_token())
        ))
        .await;
        c.expect(want.as_bytes()).await;
        c.send_line("MAIL FROM:<a@b>").await;
        c.expect_smtp(530).await;
    }
}

#[tokio::test]
async fn wrong_name_and_untrusted_certificates_are_refused() {
    let pki = TestPki::new();
    let tokens = Arc::new(TokenState::new());
    let server = FakeImapServer::start_with_config(
        pki.server_config_for(&["other.test"]),
        tokens.clone(),
        ImapOpts::default(),
    )
    .await;
    let err =
        TestClient::try_connect_tls_named(server.addr, "localhost", pki.client_config.clone())
            .await
            .err();
    assert!(
        err.is_some(),
        "a certificate for other.test must not pass as localhost"
    );
    let mut c =
        TestClient::connect_tls_named(server.addr, "other.test", pki.client_config.clone()).await;
    c.expect_prefix(b"* OK").await;
    let server = FakeImapServer::start_with_config(
        pki.untrusted_server_config(),
        tokens,
        ImapOpts::default(),
    )
    .await;
    assert!(
        TestClient::try_connect_tls_named(server.addr, "localhost", pki.client_config.clone())
            .await
            .is_err()
    );
    assert!(
        std::fs::read_to_string(&pki.ca_file)
            .expect("CA file")
            .starts_with("-----BEGIN CERTIFICATE-----")
    );
}

#[tokio::test]
async fn imap_twelve_mib_literal_round_trip_and_many_connections() {
    let (pki, tokens, server) = imap_setup(ImapOpts::default()).await;
    let started = std::time::Instant::now();
    let m = message(12 * 1024 * 1024, 3);
    let mut c = TestClient::connect_tls(server.addr, pki.client_config.clone()).await;
    c.read_line().await;
    c.send_line(&format!(
        "x1 AUTHENTICATE XOAUTH2 {}",
        xoauth2(USER, &tokens.issue_access_token())
    ))
    .await;
    c.expect_prefix(b"x1 OK").await;
    let mut data = format!("x2 APPEND INBOX {{{}+}}\r\n", m.len()).into_bytes();
    data.extend_from_slice(&m);
    data.extend_from_slice(b"\r\nx3 SELECT INBOX\r\nx4 FETCH 1 BODY.PEEK[]\r\n");
    c.send(&data).await;
    c.expect_prefix(b"x2 OK").await;
    c.read_until_tagged("x3").await;
    let resp = c.read_until_tagged("x4").await;
    let head = format!("* 1 FETCH (BODY[] {{{}}}\r\n", m.len());
    assert!(
        resp[0].starts_with(head.as_bytes()) && resp[0][head.len()..resp[0].len() - 3] == m[..]
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );

    let mut tasks = Vec::new();
    for i in 0..50 {
        let (config, token, addr) = (
            pki.client_config.clone(),
            tokens.issue_access_token(),
            server.addr,
        );
        tasks.push(tokio::spawn(async move {
            let mut c = TestClient::connect_tls(addr, config).await;
            c.read_line().await;
            c.send_line(&format!(
                "c{i} AUTHENTICATE XOAUTH2 {}",
                xoauth2(USER, &token)
            ))
            .await;
            c.expect_prefix(format!("c{i} OK").as_bytes()).await;
            c
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.expect("client task"));
    }
    assert_eq!(server.state.auth_successes(), 51);
    assert!(server.state.max_active_connections() >= 50);
    drop((c, clients));
    server
        .state
        .wait_until("all connections are closed", |s| {
            s.active_connections() == 0
        })
        .await;
}

#[tokio::test]
async fn token_server_hang_mode_never_answers() {
    let server = FakeTokenServer::start().await;
    server.state.set_mode(Mode::Hang);
    let url = server.token_url();
    let call = post_form(&url, &[("client_id", "c"), ("grant_type", "refresh_token")]);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), call)
            .await
            .is_err()
    );
    assert_eq!(server.state.requests(GRANT_REFRESH), 1);
}

#[tokio::test]
async fn introspection_answers_for_valid_access_tokens_only() {
    let server = FakeTokenServer::start().await;
    let st = server.state.clone();
    st.set_introspection_username(Some(USER));
    let url = format!("{}/introspect", server.url());
    let token = st.issue_access_token();

    let (status, json) = post_form(&url, &[("token", &token)]).await;
    assert_eq!(status, 200);
    assert_eq!(json["active"], true);
    assert_eq!(json["username"], USER);
    assert!(
        json["expires_in"].as_u64().is_some_and(|s| s > 3000),
        "{json}"
    );

    for bogus in ["at-999-nope", ""] {
        let (status, json) = post_form(&url, &[("token", bogus)]).await;
        assert_eq!(status, 200);
        assert_eq!(json, serde_json::json!({ "active": false }));
    }
    st.revoke_all();
    let (_, json) = post_form(&url, &[("token", &token)]).await;
    assert_eq!(json, serde_json::json!({ "active": false }));
    assert_eq!(st.introspections(), 4);
}
