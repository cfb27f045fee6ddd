//! Attacks on the protocol front ends and the fixed-account relay, replayed
//! end to end against the fakes: user names with control characters
//! (refused in every protocol), mechanisms offered before TLS on listeners
//! that take passwords only over TLS, and a device on the LAN that tries to
//! get past a fixed-account relay's `allowed_senders` after its first
//! transaction (RSET, pipelining, bare LF/CR in DATA, too many recipients).
//! The captured-log half of the user-name attack is `tests/log_forging.rs`.

mod harness;
mod support;

use std::net::IpAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{Listener, PASSWORD, Setup, imap, pop3, setup, smtp, start};
use support::*;

const LAN: &str = "127.0.0.2:0";
const SCANNER_IP: &str = "127.0.0.3";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// User names that would forge a log line or an XOAUTH2 field.
const HOSTILE_NAMES: &[&[u8]] = &[
    b"x\ncorp 2026-12-01T00:00:00Z INFO logged in upstream account=ceo@example.test",
    b"x\r\nINFO forged",
    b"x\rINFO forged",
    b"user@example.test\x01auth=Bearer stolen",
    b"\x1b[2Juser@example.test",
    b"user@example.test\x7f",
];

#[tokio::test]
async fn user_names_with_control_characters_are_refused_in_every_protocol() {
    let s = setup().await;
    let pop3_server =
        FakePop3Server::start(&s.pki, s.tokens.state.clone(), Pop3Opts::default()).await;
    let smtp_server =
        FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let imap_server =
        FakeImapServer::start(&s.pki, s.tokens.state.clone(), ImapOpts::default()).await;
    let (p, m, i) = (
        pop3(pop3_server.addr),
        smtp(smtp_server.addr),
        imap(imap_server.addr),
    );
    let listeners = [&p, &m, &i].map(|upstream| Listener {
        upstream,
        listen: "127.0.0.1:0",
        extra: "",
    });
    let running = start(&s.config(&listeners, "")).await;
    let (pop3_addr, smtp_addr, imap_addr) = (running.addrs[0], running.addrs[1], running.addrs[2]);

    for name in HOSTILE_NAMES {
        let shown = name.escape_ascii().to_string();
        let plain = B64.encode([b"\0", *name, b"\0", PASSWORD.as_bytes()].concat());
        let login_name = B64.encode(name);

        // SMTP: AUTH PLAIN, AUTH LOGIN, AUTH LOGIN with the name inline.
        let mut c = TestClient::connect(smtp_addr).await;
        c.expect_smtp(220).await;
        c.send(b"EHLO client\r\n").await;
        c.expect_smtp(250).await;
        c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await;
        c.expect(b"501 5.5.2 the user name contains control characters")
            .await;
        c.send(b"AUTH LOGIN\r\n").await;
        c.expect(b"334 VXNlcm5hbWU6").await;
        c.send(format!("{login_name}\r\n").as_bytes()).await;
        c.expect(b"501 5.5.2 the user name contains control characters")
            .await;
        c.send(format!("AUTH LOGIN {login_name}\r\n").as_bytes())
            .await;
        c.expect(b"501 5.5.2 the user name contains control characters")
            .await;
        // The session is still usable.
        c.send(b"NOOP\r\n").await;
        c.expect_smtp(250).await;

        // POP3: USER (a LF would end the line, so only the names without
        // one reach USER as they are), AUTH PLAIN, AUTH LOGIN.
        let mut c = TestClient::connect(pop3_addr).await;
        c.expect_prefix(b"+OK").await;
        if !name.contains(&b'\n') {
            c.send(&[b"USER ", *name, b"\r\n"].concat()).await;
            c.expect(b"-ERR the user name contains control characters")
                .await;
            c.send(format!("PASS {PASSWORD}\r\n").as_bytes()).await;
            c.expect(b"-ERR USER first").await;
        }
        c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await;
        c.expect(b"-ERR the user name contains control characters")
            .await;
        c.send(b"AUTH LOGIN\r\n").await;
        c.expect_prefix(b"+ ").await;
        c.send(format!("{login_name}\r\n").as_bytes()).await;
        c.expect(b"-ERR the user name contains control characters")
            .await;

        // IMAP (refused there already): AUTHENTICATE PLAIN.
        let mut c = TestClient::connect(imap_addr).await;
        c.read_line().await;
        c.send(format!("a AUTHENTICATE PLAIN {plain}\r\n").as_bytes())
            .await;
        c.expect(b"a BAD The user name contains control characters")
            .await;
        let _ = shown;
    }
    // A NUL cannot be inside a PLAIN name (it separates the parts), but
    // it can be inside a LOGIN name and a POP3 USER.
    let mut c = TestClient::connect(smtp_addr).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO client\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("AUTH LOGIN {}\r\n", B64.encode(b"ceo\0@example.test")).as_bytes())
        .await;
    c.expect(b"501 5.5.2 the user name contains control characters")
        .await;
    let mut c = TestClient::connect(pop3_addr).await;
    c.expect_prefix(b"+OK").await;
    c.send(b"USER ceo\0@example.test\r\n").await;
    c.expect(b"-ERR the user name contains control characters")
        .await;

    // Nothing reached a mail server or the token endpoint.
    assert_eq!(smtp_server.state.auth_attempts(), 0);
    assert_eq!(pop3_server.state.auth_attempts(), 0);
    assert_eq!(imap_server.state.auth_attempts(), 0);
}

#[tokio::test]
async fn before_tls_a_tls_only_listener_offers_no_mechanism() {
    let s = setup().await;
    let imap_server =
        FakeImapServer::start(&s.pki, s.tokens.state.clone(), ImapOpts::default()).await;
    let pop3_server =
        FakePop3Server::start(&s.pki, s.tokens.state.clone(), Pop3Opts::default()).await;
    let smtp_server =
        FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let (i, p, m) = (
        imap(imap_server.addr),
        pop3(pop3_server.addr),
        smtp(smtp_server.addr),
    );
    let tls_required = "allow_from = [\"127.0.0.0/8\"]\nlocal_tls = \"starttls\"";
    let listeners = [&i, &p, &m].map(|upstream| Listener {
        upstream,
        listen: LAN,
        extra: tls_required,
    });
    let running = start(&s.config(&listeners, "")).await;
    let from = ip(SCANNER_IP);
    let trust = s.trust();

    // IMAP: greeting and CAPABILITY without AUTH=, with LOGINDISABLED.
    let mut c = TestClient::connect_from(running.addrs[0], from).await;
    let greeting = c.read_line_str().await;
    assert!(
        !greeting.contains("AUTH=") && greeting.contains(" STARTTLS LOGINDISABLED]"),
        "{greeting}"
    );
    c.send(b"c1 CAPABILITY\r\n").await;
    let caps = c.read_line_str().await;
    assert!(
        caps.starts_with("* CAPABILITY ")
            && !caps.contains("AUTH=")
            && caps.contains("LOGINDISABLED"),
        "{caps}"
    );
    c.expect_prefix(b"c1 OK").await;
    c.send(b"s1 STARTTLS\r\n").await;
    c.expect_prefix(b"s1 OK").await;
    c.starttls("localhost", trust.clone()).await;
    c.send(b"c2 CAPABILITY\r\n").await;
    let caps = c.read_line_str().await;
    assert!(
        caps.contains("AUTH=PLAIN AUTH=LOGIN") && !caps.contains("LOGINDISABLED"),
        "{caps}"
    );
    c.expect_prefix(b"c2 OK").await;
    c.send(format!("a LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"a OK").await;

    // POP3: CAPA without USER or SASL, AUTH lists nothing; both after STLS.
    let mut c = TestClient::connect_from(running.addrs[1], from).await;
    c.expect_prefix(b"+OK").await;
    c.send(b"CAPA\r\n").await;
    c.expect_prefix(b"+OK").await;
    let capa = String::from_utf8(c.read_dot_terminated().await).unwrap();
    let keywords: Vec<&str> = capa.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert!(
        !keywords.contains(&"USER") && !keywords.contains(&"SASL") && keywords.contains(&"STLS"),
        "{capa:?}"
    );
    c.send(b"AUTH\r\n").await;
    c.expect(b"+OK").await;
    c.expect(b".").await;
    c.send(b"STLS\r\n").await;
    c.expect_prefix(b"+OK").await;
    c.starttls("localhost", trust.clone()).await;
    c.send(b"CAPA\r\n").await;
    c.expect_prefix(b"+OK").await;
    let capa = String::from_utf8(c.read_dot_terminated().await).unwrap();
    assert!(
        capa.contains("USER\r\n")
            && capa.contains("SASL PLAIN LOGIN\r\n")
            && !capa.contains("STLS"),
        "{capa:?}"
    );
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    c.expect_prefix(b"+OK").await;

    // SMTP: EHLO without AUTH before STARTTLS, with AUTH after.
    let mut c = TestClient::connect_from(running.addrs[2], from).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO client.example\r\n").await;
    let ehlo = c.expect_smtp(250).await.concat();
    let ehlo = String::from_utf8(ehlo).unwrap();
    assert!(
        !ehlo.contains("AUTH") && ehlo.contains("250 STARTTLS\r\n"),
        "{ehlo}"
    );
    c.send(b"STARTTLS\r\n").await;
    c.expect_smtp(220).await;
    c.starttls("localhost", trust).await;
    c.send(b"EHLO client.example\r\n").await;
    let ehlo = String::from_utf8(c.expect_smtp(250).await.concat()).unwrap();
    assert!(
        ehlo.contains("AUTH PLAIN LOGIN") && !ehlo.contains("STARTTLS"),
        "{ehlo}"
    );
    c.send(
        format!(
            "AUTH PLAIN {}\r\n",
            B64.encode(format!("\0{USER}\0{PASSWORD}"))
        )
        .as_bytes(),
    )
    .await;
    c.expect(smtp_server::AUTH_OK.as_bytes()).await;
}

/// A scanner's listener: no login, MAIL FROM limited to `allowed_senders`,
/// three recipients per message.
async fn fixed_relay(s: &Setup, server: &FakeSmtpServer) -> xoauth2_proxy::Running {
    s.fixed_relay(server.addr, LAN, &[SCANNER], "max_recipients = 3")
        .await
}

const SCANNER: &str = "scanner@example.test";

/// Connects as the scanner and sends a first message (which starts the
/// relay); returns the client.
async fn relaying(addr: std::net::SocketAddr) -> TestClient {
    let mut c = TestClient::connect_from(addr, ip(SCANNER_IP)).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO scanner\r\n").await;
    let ehlo = String::from_utf8(c.expect_smtp(250).await.concat()).unwrap();
    assert!(
        !ehlo.contains("CHUNKING") && !ehlo.contains("BINARYMIME"),
        "{ehlo}"
    );
    c.send(format!("MAIL FROM:<{SCANNER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(b"Subject: first\r\n\r\npage 1\r\n"))
        .await;
    c.expect_smtp(250).await;
    c
}

#[tokio::test]
async fn after_rset_a_sender_outside_allowed_senders_never_reaches_the_server() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let running = fixed_relay(&s, &server).await;
    let mut c = relaying(running.addrs[0]).await;

    c.send(b"RSET\r\n").await;
    c.expect_smtp(250).await;
    c.send(b"MAIL FROM:<ceo@example.test>\r\n").await;
    c.expect(b"550 5.7.1 Sender <ceo@example.test> is not allowed on this relay")
        .await;
    // Pipelined after the refusal: answered here, in order.
    c.send(b"MAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\n")
        .await;
    c.expect_prefix(b"550 5.7.1").await;
    c.expect(b"503 5.5.1 Need MAIL command").await;
    c.expect(b"503 5.5.1 Need MAIL command").await;
    // Without RSET, right after a message, and with a source route.
    c.send(format!("MAIL FROM:<{SCANNER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(b"Subject: second\r\n\r\npage 2\r\n"))
        .await;
    c.expect_smtp(250).await;
    c.send(b"MAIL FROM:<@relay.example:ceo@example.test>\r\n")
        .await;
    c.expect_prefix(b"550 5.7.1").await;
    c.send(b"QUIT\r\n").await;
    c.expect_smtp(221).await;

    let mails: Vec<String> = server
        .state
        .command_lines()
        .into_iter()
        .filter(|l| l.to_ascii_uppercase().starts_with("MAIL"))
        .collect();
    assert_eq!(
        mails,
        vec![
            format!("MAIL FROM:<{SCANNER}>"),
            format!("MAIL FROM:<{SCANNER}>")
        ]
    );
    assert!(
        server
            .state
            .received()
            .iter()
            .all(|m| m.from == SCANNER && !m.to.iter().any(|t| t.starts_with("victim")))
    );
    assert_eq!(server.state.messages().len(), 2);
}

#[tokio::test]
async fn more_recipients_than_the_cap_are_refused_with_452() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let running = fixed_relay(&s, &server).await;
    let mut c = relaying(running.addrs[0]).await;
    c.send(format!("MAIL FROM:<{SCANNER}>\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    let burst: String = (0..5)
        .map(|n| format!("RCPT TO:<r{n}@example.test>\r\n"))
        .collect();
    c.send(burst.as_bytes()).await;
    for _ in 0..3 {
        c.expect_smtp(250).await;
    }
    for _ in 0..2 {
        c.expect(b"452 4.5.3 Too many recipients (at most 3 per message)")
            .await;
    }
    c.send(b"DATA\r\n").await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(b"Subject: many\r\n\r\nx\r\n")).await;
    c.expect_smtp(250).await;
    let last = server.state.received().pop().unwrap();
    assert_eq!(
        last.to,
        vec!["r0@example.test", "r1@example.test", "r2@example.test"]
    );
}

#[tokio::test]
async fn bare_lf_and_bare_cr_in_data_are_normalized_and_cannot_end_the_message() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let running = fixed_relay(&s, &server).await;
    let mut c = relaying(running.addrs[0]).await;

    // SMTP smuggling: a second transaction hidden behind <LF>.<LF> and
    // <CR>.<CR>, with a sender the relay refuses.
    let smuggled = b"Subject: smuggle\r\n\r\nhello\n.\nMAIL FROM:<ceo@example.test>\nRCPT TO:<victim@example.test>\nDATA\nforged\r.\rMAIL FROM:<ceo@example.test>\r\nbare\rcr and bare\nlf\r\n.\r\n";
    c.send(format!("MAIL FROM:<{SCANNER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(smuggled).await;
    c.expect_smtp(250).await;
    c.send(b"NOOP\r\n").await;
    c.expect_smtp(250).await;

    let received = server.state.received();
    assert_eq!(received.len(), 2, "one message each, nothing smuggled");
    let body = String::from_utf8(received[1].body.clone()).unwrap();
    assert_eq!(
        body,
        "Subject: smuggle\r\n\r\nhello\r\n.\r\nMAIL FROM:<ceo@example.test>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nforged\r\n.\r\nMAIL FROM:<ceo@example.test>\r\nbare\r\ncr and bare\r\nlf\r\n"
    );
    assert!(
        !server
            .state
            .command_lines()
            .iter()
            .any(|l| l.contains("ceo@") || l.contains("victim")),
        "{:?}",
        server.state.command_lines()
    );
}

#[tokio::test]
async fn a_long_pipelined_session_of_several_transactions_works() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let running = fixed_relay(&s, &server).await;
    let mut c = relaying(running.addrs[0]).await;
    let mut sent = vec![b"Subject: first\r\n\r\npage 1\r\n".to_vec()];
    for n in 0..20 {
        let body = message(2_000 + n * 997, n as u64);
        // PIPELINING: RSET, MAIL, RCPTs and DATA in one write.
        c.send(
            format!(
                "RSET\r\nMAIL FROM:<{}> SIZE={}\r\nRCPT TO:<a{n}@example.test>\r\nRCPT TO:<b{n}@example.test>\r\nDATA\r\n",
                if n % 2 == 0 { SCANNER.to_owned() } else { SCANNER.to_uppercase() },
                body.len()
            )
            .as_bytes(),
        )
        .await;
        for code in [250, 250, 250, 250, 354] {
            c.expect_smtp(code).await;
        }
        // The message and the next command in one write.
        let mut data = dot_stuff(&body);
        data.extend_from_slice(b"NOOP\r\n");
        c.send(&data).await;
        c.expect_smtp(250).await;
        c.expect_smtp(250).await;
        sent.push(body);
    }
    // A later EHLO: the reply still offers no CHUNKING.
    c.send(b"EHLO scanner\r\n").await;
    let ehlo = String::from_utf8(c.expect_smtp(250).await.concat()).unwrap();
    assert!(!ehlo.contains("CHUNKING"), "{ehlo}");
    c.send(b"BDAT 5 LAST\r\nhello").await;
    c.expect(b"502 5.5.1 BDAT is not offered on this relay, use DATA")
        .await;
    c.send(b"QUIT\r\n").await;
    c.expect_smtp(221).await;
    c.expect_eof().await;
    assert!(server.state.messages() == sent, "the messages differ");
    assert_eq!(
        server.state.auth_successes(),
        1,
        "one sign-in per connection"
    );
}
