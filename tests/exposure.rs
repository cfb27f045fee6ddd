//! Listeners other machines reach: `allow_from` refusals, passwords refused without TLS,
//! the pre-authentication deadline, the per-source connection limit, and the fixed-account
//! SMTP relay for devices that cannot log in.
//!
//! Tests can only use loopback addresses: the proxy listens on 127.0.0.2 and clients
//! connect from chosen 127.0.0.0/8 source addresses. A listener with `allow_from` counts as
//! exposed to the network whatever its address, so the same rules apply as on a LAN address.

mod harness;
mod support;

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{Listener, PASSWORD, Setup, imap, pop3, setup, smtp, start};
use support::*;
use xoauth2_proxy::config::Config;

const LAN: &str = "127.0.0.2:0";

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

#[tokio::test]
async fn connections_from_outside_allow_from_get_a_protocol_refusal() {
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
    let only_3 = "allow_from = [\"127.0.0.3/32\"]\nallow_plaintext = true";
    let implicit = "allow_from = [\"127.0.0.3\"]\nlocal_tls = \"implicit\"";
    let listeners = [
        Listener {
            upstream: &i,
            listen: LAN,
            extra: only_3,
        },
        Listener {
            upstream: &p,
            listen: LAN,
            extra: only_3,
        },
        Listener {
            upstream: &m,
            listen: LAN,
            extra: only_3,
        },
        Listener {
            upstream: &i,
            listen: LAN,
            extra: implicit,
        },
    ];
    let running = start(&s.config(&listeners, "")).await;

    let refusals: [&[u8]; 3] = [
        b"* BYE Connections from your address are not allowed here",
        b"-ERR [SYS/PERM] Connections from your address are not allowed here",
        b"554 5.7.1 Connections from your address are not allowed here",
    ];
    for (addr, refusal) in running.addrs.iter().zip(refusals) {
        for outsider in ["127.0.0.1", "127.0.0.4"] {
            let mut c = TestClient::connect_from(*addr, ip(outsider)).await;
            c.expect(refusal).await;
            c.expect_eof().await;
        }
        let mut c = TestClient::connect_from(*addr, ip("127.0.0.3")).await;
        assert!(!c.read_line().await.is_empty());
    }
    // On an implicit-TLS listener the refusal comes over TLS.
    let trust = s.trust();
    let mut c = TestClient::connect_from(running.addrs[3], ip("127.0.0.1")).await;
    c.starttls("localhost", trust.clone()).await;
    c.expect(refusals[0]).await;
    let mut c = TestClient::connect_from(running.addrs[3], ip("127.0.0.3")).await;
    c.starttls("localhost", trust).await;
    c.expect_prefix(b"* OK [CAPABILITY").await;
    // Refused clients never cost an upstream connection.
    assert_eq!(imap_server.state.connections(), 2);
    assert_eq!(pop3_server.state.connections(), 1);
    assert_eq!(smtp_server.state.connections(), 1);
}

#[test]
fn exposure_mistakes_stop_the_proxy_from_starting() {
    let base = "[[listener]]\nprotocol = \"smtp\"\nupstream = \"smtp.office365.com:587\"\nupstream_tls = \"starttls\"\n";
    let account = "[[account]]\nusername = \"scanner@contoso.com\"\nprovider = \"office365\"\nclient_id = \"x\"\n";
    let cases: &[(&str, &str)] = &[
        (
            "listen = \"192.168.1.10:1587\"\nlocal_tls = \"starttls\"",
            "allow_from = [\"192.168.1.0/24\"]",
        ),
        (
            "listen = \"0.0.0.0:1587\"\nlocal_tls = \"starttls\"",
            "not a loopback address",
        ),
        (
            "listen = \"192.168.1.10:1587\"\nallow_from = [\"192.168.1.0/24\"]",
            "allow_plaintext = true",
        ),
        (
            "listen = \"192.168.1.10:1587\"\nallow_from = [\"192.168.1.1/24\"]\nallow_plaintext = true",
            "host bits",
        ),
        (
            "listen = \"192.168.1.10:1587\"\nallow_from = [\"lan\"]\nallow_plaintext = true",
            "allow_from[0]",
        ),
        (
            "listen = \"127.0.0.1:1587\"\nfixed_account = \"scanner@contoso.com\"\nallowed_senders = [\"scanner@contoso.com\"]",
            "is required with fixed_account",
        ),
        (
            "listen = \"127.0.0.1:1587\"\nallow_from = [\"127.0.0.1\"]\nfixed_account = \"scanner@contoso.com\"\nallowed_senders = [\"scanner@contoso.com\"]",
            "needs password_hash",
        ),
    ];
    for (listener, needle) in cases {
        let text = format!("{base}{listener}\n\n{account}");
        let err = Config::parse(&text, std::path::Path::new("proxy.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{listener}: {err}");
    }
}

#[tokio::test]
async fn passwords_without_tls_are_refused_on_a_network_listener() {
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
    let tls_offered = "allow_from = [\"127.0.0.0/8\"]\nlocal_tls = \"starttls\"";
    let plaintext_allowed = "allow_from = [\"127.0.0.0/8\"]\nallow_plaintext = true";
    let listeners = [
        Listener {
            upstream: &i,
            listen: LAN,
            extra: tls_offered,
        },
        Listener {
            upstream: &p,
            listen: LAN,
            extra: tls_offered,
        },
        Listener {
            upstream: &m,
            listen: LAN,
            extra: tls_offered,
        },
        Listener {
            upstream: &m,
            listen: LAN,
            extra: plaintext_allowed,
        },
    ];
    let running = start(&s.config(&listeners, "")).await;
    let from = ip("127.0.0.3");

    // IMAP: LOGINDISABLED before TLS, LOGIN refused, then fine after STARTTLS.
    let mut c = TestClient::connect_from(running.addrs[0], from).await;
    let greeting = c.read_line_str().await;
    assert!(greeting.contains(" STARTTLS LOGINDISABLED]"), "{greeting}");
    c.send(format!("a1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"a1 NO [PRIVACYREQUIRED] Passwords are accepted only over TLS")
        .await;
    c.send(b"s1 STARTTLS\r\n").await;
    c.expect_prefix(b"s1 OK").await;
    c.starttls("localhost", s.trust()).await;
    c.send(b"c1 CAPABILITY\r\n").await;
    let caps = c.read_line_str().await;
    assert!(
        !caps.contains("LOGINDISABLED") && !caps.contains("STARTTLS"),
        "{caps}"
    );
    c.expect_prefix(b"c1 OK").await;
    c.send(format!("a2 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"a2 OK").await;

    // POP3.
    let mut c = TestClient::connect_from(running.addrs[1], from).await;
    c.expect(pop3_server::GREETING.as_bytes()).await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    c.expect_prefix(b"-ERR [SYS/PERM] Passwords are accepted only over TLS")
        .await;

    // SMTP.
    let mut c = TestClient::connect_from(running.addrs[2], from).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO client.example\r\n").await;
    c.expect_smtp(250).await;
    c.send(
        format!(
            "AUTH PLAIN {}\r\n",
            B64.encode(format!("\0{USER}\0{PASSWORD}"))
        )
        .as_bytes(),
    )
    .await;
    c.expect_prefix(b"538 5.7.11 Passwords are accepted only over TLS")
        .await;

    // Nothing of the refused logins went further than the proxy.
    assert_eq!(
        pop3_server.state.auth_attempts() + smtp_server.state.auth_attempts(),
        0
    );
    assert_eq!(
        imap_server.state.auth_attempts(),
        1,
        "only the login over TLS"
    );

    // allow_plaintext: a device that cannot do TLS logs in.
    let mut c = TestClient::connect_from(running.addrs[3], from).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO printer\r\n").await;
    c.expect_smtp(250).await;
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

#[tokio::test]
async fn slow_and_silent_clients_are_closed_at_the_preauth_deadline() {
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
    let listeners = [
        Listener {
            upstream: &i,
            listen: "127.0.0.1:0",
            extra: "",
        },
        Listener {
            upstream: &p,
            listen: "127.0.0.1:0",
            extra: "",
        },
        Listener {
            upstream: &m,
            listen: "127.0.0.1:0",
            extra: "",
        },
    ];
    // The default deadline (60 s), on paused time.
    let running = start(&s.config(&listeners, "")).await;
    let mut trickler = TestClient::connect(running.addrs[0]).await;
    trickler.expect_prefix(b"* OK").await;
    let mut silent_pop3 = TestClient::connect(running.addrs[1]).await;
    silent_pop3.expect(pop3_server::GREETING.as_bytes()).await;
    let mut silent_smtp = TestClient::connect(running.addrs[2]).await;
    silent_smtp.expect(smtp_server::GREETING.as_bytes()).await;

    tokio::time::pause();
    let started = tokio::time::Instant::now();
    // One byte every 5 s: never a whole login, always some traffic.
    for byte in b"a1 LOGIN us".iter() {
        trickler.send(&[*byte]).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    trickler.set_timeout(Duration::from_secs(30));
    trickler.expect(b"* BYE Autologout: no login in time").await;
    trickler.expect_eof().await;
    assert!(
        started.elapsed() >= Duration::from_secs(55),
        "{:?}",
        started.elapsed()
    );
    silent_pop3.expect(b"-ERR Timeout: no login in time").await;
    silent_pop3.expect_eof().await;
    silent_smtp
        .expect(b"421 4.4.2 Timeout: no login in time")
        .await;
    silent_smtp.expect_eof().await;
    tokio::time::resume();
    assert_eq!(imap_server.state.auth_attempts(), 0);
}

#[tokio::test]
async fn connections_per_source_address_are_limited() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let m = smtp(server.addr);
    let extra = "allow_from = [\"127.0.0.0/8\"]\nallow_plaintext = true";
    let running = start(&s.config(
        &[Listener {
            upstream: &m,
            listen: LAN,
            extra,
        }],
        "max_connections_per_source = 2",
    ))
    .await;
    let addr = running.addrs[0];
    let busy_source = ip("127.0.0.3");

    let mut first = TestClient::connect_from(addr, busy_source).await;
    first.expect(smtp_server::GREETING.as_bytes()).await;
    let mut second = TestClient::connect_from(addr, busy_source).await;
    second.expect(smtp_server::GREETING.as_bytes()).await;
    let mut third = TestClient::connect_from(addr, busy_source).await;
    third
        .expect(b"421 4.7.0 Too many connections from your address; try again later")
        .await;
    third.expect_eof().await;
    // Another device is not affected.
    let mut other = TestClient::connect_from(addr, ip("127.0.0.4")).await;
    other.expect(smtp_server::GREETING.as_bytes()).await;

    // A closed connection gives its place back.
    first.send(b"QUIT\r\n").await;
    first.expect_smtp(221).await;
    first.expect_eof().await;
    let mut again = None;
    for _ in 0..50 {
        let mut c = TestClient::connect_from(addr, busy_source).await;
        let line = c.read_line().await;
        if line.starts_with(b"220 ") {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        again.is_some(),
        "the slot of a closed connection was not given back"
    );
}

/// An SMTP listener for a scanner: no client login, MAIL FROM limited to allowed_senders.
async fn fixed_relay(s: &Setup, server: &FakeSmtpServer) -> xoauth2_proxy::Running {
    s.fixed_relay(server.addr, LAN, &["scanner@example.test", USER], "")
        .await
}

#[tokio::test]
async fn a_fixed_account_relay_delivers_without_a_login_and_refuses_other_senders() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let running = fixed_relay(&s, &server).await;
    let addr = running.addrs[0];

    let mut c = TestClient::connect_from(addr, ip("127.0.0.3")).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"MAIL FROM:<scanner@example.test>\r\n").await;
    c.expect(b"503 5.5.1 Send EHLO first").await;
    c.send(b"EHLO scanner\r\n").await;
    c.expect_smtp(250).await;
    c.send(b"MAIL FROM:<ceo@example.test>\r\n").await;
    c.expect(b"550 5.7.1 Sender <ceo@example.test> is not allowed on this relay")
        .await;
    c.send(b"MAIL FROM:<>\r\n").await;
    c.expect_prefix(b"550 5.7.1").await;
    assert_eq!(
        server.state.auth_attempts(),
        0,
        "a refused sender must not sign in upstream"
    );

    let body = b"Subject: scan\r\n\r\nscanned page\r\n";
    c.send(b"MAIL FROM:<Scanner@Example.test> SIZE=100\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(body)).await;
    c.expect_smtp(250).await;
    c.send(b"QUIT\r\n").await;
    c.expect_smtp(221).await;

    let received = server.state.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].from, "Scanner@Example.test");
    assert_eq!(received[0].body, body.to_vec());
    assert_eq!(server.state.sasl_users(), vec![USER.to_owned()]);
    assert_eq!(server.state.auth_successes(), 1);

    // A device configured to log in anyway: its AUTH is accepted and ignored.
    let mut c = TestClient::connect_from(addr, ip("127.0.0.3")).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO printer\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("AUTH PLAIN {}\r\n", B64.encode("\0printer\0whatever")).as_bytes())
        .await;
    c.expect(b"235 2.7.0 Authentication not needed here; accepted")
        .await;
    c.send(format!("MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(b"Subject: two\r\n\r\nsecond\r\n")).await;
    c.expect_smtp(250).await;
    assert_eq!(server.state.messages().len(), 2);
}
