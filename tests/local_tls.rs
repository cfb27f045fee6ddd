//! TLS towards the mail client: STARTTLS (IMAP STARTTLS, POP3 STLS, SMTP STARTTLS) and
//! implicit TLS, verified by clients that trust only the certificate the proxy generated in
//! its state directory; plaintext pipelined with STARTTLS is discarded; the certificate is
//! kept across restarts; a configured cert_file/key_file is used as given.

mod harness;
mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{Listener, PASSWORD, imap, pop3, setup, smtp, start};
use support::*;

const STARTTLS: &str = "local_tls = \"starttls\"";
const IMPLICIT: &str = "local_tls = \"implicit\"";

#[tokio::test]
async fn imap_starttls_with_the_generated_certificate_and_injected_plaintext_discarded() {
    let s = setup().await;
    let server = FakeImapServer::start(&s.pki, s.tokens.state.clone(), ImapOpts::default()).await;
    let up = imap(server.addr);
    let running = start(&s.config(
        &[Listener {
            upstream: &up,
            listen: "127.0.0.1:0",
            extra: STARTTLS,
        }],
        "",
    ))
    .await;

    let mut c = TestClient::connect(running.addrs[0]).await;
    let greeting = c.read_line_str().await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "),
        "{greeting}"
    );
    assert!(greeting.contains(" STARTTLS]"), "{greeting}");
    // A loopback listener takes passwords without TLS: no LOGINDISABLED.
    assert!(!greeting.contains("LOGINDISABLED"), "{greeting}");

    // A man in the middle appends a command to STARTTLS: it must never run.
    c.send(format!("s1 STARTTLS\r\nx1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect(b"s1 OK Begin TLS negotiation now").await;
    c.starttls("localhost", s.trust()).await;
    assert!(c.is_tls());

    c.send(b"c1 CAPABILITY\r\n").await;
    let caps = c.read_line_str().await;
    assert!(
        caps.starts_with("* CAPABILITY IMAP4rev1 "),
        "the injected LOGIN was answered: {caps}"
    );
    assert!(!caps.contains("STARTTLS"), "{caps}");
    c.expect(b"c1 OK CAPABILITY completed").await;
    c.send(b"s2 STARTTLS\r\n").await;
    c.expect_prefix(b"s2 BAD").await;
    assert_eq!(
        server.state.auth_attempts(),
        0,
        "the injected LOGIN reached the server"
    );

    c.send(format!("a1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"a1 OK").await;
    c.send(b"n1 NOOP\r\n").await;
    let reply = c.read_until_tagged("n1").await;
    assert!(reply.last().unwrap().starts_with(b"n1 OK"), "{reply:?}");
    assert_eq!(server.state.auth_successes(), 1);
}

#[tokio::test]
async fn pop3_stls_with_the_generated_certificate_and_injected_plaintext_discarded() {
    let s = setup().await;
    let server = FakePop3Server::start(&s.pki, s.tokens.state.clone(), Pop3Opts::default()).await;
    let up = pop3(server.addr);
    let running = start(&s.config(
        &[Listener {
            upstream: &up,
            listen: "127.0.0.1:0",
            extra: STARTTLS,
        }],
        "",
    ))
    .await;

    let mut c = TestClient::connect(running.addrs[0]).await;
    c.expect(pop3_server::GREETING.as_bytes()).await;
    c.send(b"CAPA\r\n").await;
    let capa = String::from_utf8_lossy(&c.read_dot_terminated().await).into_owned();
    assert!(capa.contains("\r\nSTLS\r\n"), "{capa}");

    c.send(format!("STLS\r\nUSER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect(b"+OK Begin TLS negotiation").await;
    c.starttls("localhost", s.trust()).await;

    c.send(b"CAPA\r\n").await;
    let capa = String::from_utf8_lossy(&c.read_dot_terminated().await).into_owned();
    assert!(
        capa.starts_with("+OK Capability list follows\r\n"),
        "the injected USER was answered: {capa}"
    );
    assert!(!capa.contains("STLS"), "{capa}");
    c.send(b"STLS\r\n").await;
    c.expect_prefix(b"-ERR").await;
    assert_eq!(
        server.state.auth_attempts(),
        0,
        "the injected login reached the server"
    );

    c.send(format!("USER {USER}\r\n").as_bytes()).await;
    c.expect_prefix(b"+OK").await;
    c.send(format!("PASS {PASSWORD}\r\n").as_bytes()).await;
    c.expect_prefix(b"+OK").await;
    c.send(b"STAT\r\n").await;
    c.expect_prefix(b"+OK").await;
    assert_eq!(server.state.auth_successes(), 1);
}

#[tokio::test]
async fn smtp_starttls_with_the_generated_certificate_then_a_new_ehlo() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let up = smtp(server.addr);
    let running = start(&s.config(
        &[Listener {
            upstream: &up,
            listen: "127.0.0.1:0",
            extra: STARTTLS,
        }],
        "",
    ))
    .await;

    let mut c = TestClient::connect(running.addrs[0]).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO client.example\r\n").await;
    let ehlo = c.expect_smtp(250).await;
    assert!(ehlo.iter().any(|l| &l[4..] == b"STARTTLS\r\n"), "{ehlo:?}");

    let plain = B64.encode(format!("\0{USER}\0{PASSWORD}"));
    c.send(format!("STARTTLS\r\nAUTH PLAIN {plain}\r\n").as_bytes())
        .await;
    c.expect(b"220 2.0.0 Ready to start TLS").await;
    c.starttls("localhost", s.trust()).await;

    // RFC 3207: the session starts over, so AUTH needs a new EHLO first; the
    // first reply is to this command, not to the injected AUTH.
    c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await;
    c.expect(b"503 5.5.1 Send EHLO first").await;
    c.send(b"EHLO client.example\r\n").await;
    let ehlo = c.expect_smtp(250).await;
    assert!(
        !ehlo.iter().any(|l| l.ends_with(b"STARTTLS\r\n")),
        "{ehlo:?}"
    );
    assert!(
        ehlo.iter().any(|l| &l[4..] == b"AUTH PLAIN LOGIN\r\n"),
        "{ehlo:?}"
    );
    assert_eq!(
        server.state.auth_attempts(),
        0,
        "the injected AUTH reached the server"
    );

    c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await;
    c.expect(smtp_server::AUTH_OK.as_bytes()).await;
    let body = b"Subject: over TLS\r\n\r\nhello\r\n";
    c.send(format!("MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(body)).await;
    c.expect_smtp(250).await;
    assert_eq!(server.state.messages(), vec![body.to_vec()]);
}

#[tokio::test]
async fn implicit_tls_on_imap_pop3_and_smtp() {
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
            extra: IMPLICIT,
        },
        Listener {
            upstream: &p,
            listen: "127.0.0.1:0",
            extra: IMPLICIT,
        },
        Listener {
            upstream: &m,
            listen: "127.0.0.1:0",
            extra: IMPLICIT,
        },
    ];
    let running = start(&s.config(&listeners, "")).await;

    // Verified by IP address as well as by name: both are in the certificate.
    let mut c = TestClient::connect_tls_named(running.addrs[0], "127.0.0.1", s.trust()).await;
    let greeting = c.read_line_str().await;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1 "),
        "{greeting}"
    );
    assert!(!greeting.contains("STARTTLS"), "{greeting}");
    c.send(format!("a1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"a1 OK").await;

    let mut c = TestClient::connect_tls(running.addrs[1], s.trust()).await;
    c.expect(pop3_server::GREETING.as_bytes()).await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    c.expect_prefix(b"+OK").await;

    let mut c = TestClient::connect_tls_named(running.addrs[2], "::1", s.trust()).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO scanner\r\n").await;
    let ehlo = c.expect_smtp(250).await;
    assert!(
        !ehlo.iter().any(|l| l.ends_with(b"STARTTLS\r\n")),
        "{ehlo:?}"
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

    // A client that does not trust the certificate cannot connect.
    let untrusting = TestClient::try_connect_tls_named(
        running.addrs[0],
        "localhost",
        s.pki.client_config.clone(),
    )
    .await;
    assert!(
        untrusting.is_err(),
        "a client trusting only the test CA accepted the generated certificate"
    );
    // Nor can one that asks for a name the certificate does not carry.
    let wrong =
        TestClient::try_connect_tls_named(running.addrs[0], "elsewhere.example", s.trust()).await;
    assert!(wrong.is_err());
}

#[tokio::test]
async fn the_generated_certificate_is_kept_across_restarts_and_renewed_for_new_names() {
    let s = setup().await;
    let server = FakeImapServer::start(&s.pki, s.tokens.state.clone(), ImapOpts::default()).await;
    let up = imap(server.addr);
    let listeners = [Listener {
        upstream: &up,
        listen: "127.0.0.1:0",
        extra: IMPLICIT,
    }];
    let certs = s.state_dir.path().join("certs");

    let running = start(&s.config(&listeners, "")).await;
    let cert =
        std::fs::read(certs.join("local-cert.pem")).expect("certificate written on first start");
    let key = std::fs::read(certs.join("local-key.pem")).expect("key written on first start");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("local-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the key file must be owner-only");
    }
    let trust_first = s.trust();
    running.shutdown().await;

    let running = start(&s.config(&listeners, "")).await;
    assert_eq!(
        std::fs::read(certs.join("local-cert.pem")).unwrap(),
        cert,
        "certificate replaced on restart"
    );
    assert_eq!(
        std::fs::read(certs.join("local-key.pem")).unwrap(),
        key,
        "key replaced on restart"
    );
    // A client that trusted it before the restart still connects.
    let mut c = TestClient::connect_tls(running.addrs[0], trust_first.clone()).await;
    c.expect_prefix(b"* OK").await;
    running.shutdown().await;

    // A name added to cert_names needs a new certificate.
    let running = start(&s.config(&listeners, "cert_names = [\"mail.example.lan\"]")).await;
    assert_ne!(std::fs::read(certs.join("local-cert.pem")).unwrap(), cert);
    let mut c =
        TestClient::connect_tls_named(running.addrs[0], "mail.example.lan", s.trust()).await;
    c.expect_prefix(b"* OK").await;
    running.shutdown().await;
}

#[tokio::test]
async fn a_configured_certificate_is_used_as_given() {
    let s = setup().await;
    let server = FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let up = smtp(server.addr);
    let (cert_pem, key_pem) = s.pki.leaf_pem(&["mail.example.lan"]);
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert_pem).unwrap();
    std::fs::write(&key_file, key_pem).unwrap();
    let extra = format!(
        "cert_file = {:?}\nkey_file = {:?}",
        cert_file.display().to_string(),
        key_file.display().to_string()
    );
    let running = start(&s.config(
        &[Listener {
            upstream: &up,
            listen: "127.0.0.1:0",
            extra: STARTTLS,
        }],
        &extra,
    ))
    .await;

    let mut c = TestClient::connect(running.addrs[0]).await;
    c.expect(smtp_server::GREETING.as_bytes()).await;
    c.send(b"EHLO client.example\r\n").await;
    c.expect_smtp(250).await;
    c.send(b"STARTTLS\r\n").await;
    c.expect(b"220 2.0.0 Ready to start TLS").await;
    c.starttls("mail.example.lan", s.pki.client_config.clone())
        .await;
    c.send(b"EHLO client.example\r\n").await;
    c.expect_smtp(250).await;
    assert!(
        !s.state_dir.path().join("certs").exists(),
        "no certificate is generated when one is configured"
    );
}
