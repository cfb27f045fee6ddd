//! Passwords, access tokens, refresh tokens, the client secret and message
//! bodies never reach a log line, at any level, on success or failure: a
//! device-code sign-in, then every login form of IMAP, POP3 and SMTP, a
//! forced refresh, mail fetched and sent, and refused logins, all under a
//! TRACE subscriber. This binary installs a global subscriber, so it holds a
//! single test.

mod harness;
mod support;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{PASSWORD, SEED_REFRESH, config_text, imap, pop3, smtp, start};
use secrecy::SecretString;
use support::*;
use xoauth2_proxy::config::Config;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const CLIENT_SECRET: &str = "cs-Q8~never.in.a.log";
const IMAP_BODY: &str = "imap-body-marker-4f1d9c";
const POP3_BODY: &str = "pop3-body-marker-8a2e77";
const SMTP_BODY: &str = "smtp-body-marker-1b6c30";
const GRAPH_BODY: &str = "graph-body-marker-5e0a42";

fn message(marker: &str) -> Vec<u8> {
    format!("Subject: private\r\n\r\n{marker}\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let imap_server = FakeImapServer::start(
        &pki,
        tokens.state.clone(),
        ImapOpts {
            messages: vec![message(IMAP_BODY)],
            ..ImapOpts::default()
        },
    )
    .await;
    let pop3_server = FakePop3Server::start(
        &pki,
        tokens.state.clone(),
        Pop3Opts {
            messages: vec![message(POP3_BODY)],
            ..Pop3Opts::default()
        },
    )
    .await;
    let smtp_server = FakeSmtpServer::start(&pki, tokens.state.clone(), SmtpOpts::default()).await;
    let refusing_smtp = FakeSmtpServer::start(
        &pki,
        tokens.state.clone(),
        SmtpOpts {
            error_challenge: true,
            user: "other@example.test".into(),
            ..SmtpOpts::default()
        },
    )
    .await;
    let state_dir = tempfile::tempdir().unwrap();
    let mut text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[
            imap(imap_server.addr),
            pop3(pop3_server.addr),
            smtp(smtp_server.addr),
            smtp(refusing_smtp.addr),
        ],
        "",
    );
    text.push_str(&format!("client_secret = \"{CLIENT_SECRET}\"\n"));
    // A Graph listener, for a large message (draft, upload URL with a token).
    let graph = support::graph_server::FakeGraphServer::start(tokens.state.clone()).await;
    text.push_str(&format!(
        "graph_url = \"{}\"\n\n[[listener]]\nprotocol = \"smtp\"\n\
         listen = \"127.0.0.1:0\"\nbackend = \"graph\"\n",
        graph.url()
    ));

    // Sign-in with the device code grant, as `authorize` does.
    let mut secrets = vec![
        PASSWORD.to_owned(),
        SEED_REFRESH.to_owned(),
        CLIENT_SECRET.to_owned(),
        IMAP_BODY.to_owned(),
        POP3_BODY.to_owned(),
        SMTP_BODY.to_owned(),
        GRAPH_BODY.to_owned(),
        support::graph_server::UPLOAD_SECRET.to_owned(),
    ];
    secrets.extend(sign_in(&text, state_dir.path(), &tokens).await);

    let running = start(&text).await;
    let (imap_addr, pop3_addr, smtp_addr, refusing_addr) = (
        running.addrs[0],
        running.addrs[1],
        running.addrs[2],
        running.addrs[3],
    );
    let plain = B64.encode(format!("\0{USER}\0{PASSWORD}"));
    let (user64, pass64) = (B64.encode(USER), B64.encode(PASSWORD));

    // IMAP: LOGIN (binds the password, refreshes) and a FETCH.
    let mut c = TestClient::connect(imap_addr).await;
    c.read_line().await;
    c.send(format!("a LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    assert!(c.read_line_str().await.starts_with("a OK"));
    c.send(b"s SELECT INBOX\r\n").await;
    c.read_until_tagged("s").await;
    c.send(b"f FETCH 1 BODY[]\r\n").await;
    let fetched = c.read_until_tagged("f").await.concat();
    assert!(String::from_utf8_lossy(&fetched).contains(IMAP_BODY));
    // AUTHENTICATE PLAIN (initial response) after a forced refresh.
    running.context.gate.tokens().discard_access_token(USER);
    let mut c = TestClient::connect(imap_addr).await;
    c.read_line().await;
    c.send(format!("b AUTHENTICATE PLAIN {plain}\r\n").as_bytes())
        .await;
    assert!(c.read_line_str().await.starts_with("b OK"));
    // AUTHENTICATE LOGIN.
    let mut c = TestClient::connect(imap_addr).await;
    c.read_line().await;
    c.send(b"c AUTHENTICATE LOGIN\r\n").await;
    c.expect_prefix(b"+ ").await;
    c.send(format!("{user64}\r\n").as_bytes()).await;
    c.expect_prefix(b"+ ").await;
    c.send(format!("{pass64}\r\n").as_bytes()).await;
    assert!(c.read_line_str().await.starts_with("c OK"));
    // A wrong password and an unknown user.
    let mut c = TestClient::connect(imap_addr).await;
    c.read_line().await;
    c.send(format!("d LOGIN {USER} not-{PASSWORD}\r\n").as_bytes())
        .await;
    assert!(c.read_line_str().await.starts_with("d NO"));
    c.send(format!("e LOGIN nobody@example.test {PASSWORD}\r\n").as_bytes())
        .await;
    assert!(c.read_line_str().await.starts_with("e NO"));

    // POP3: USER/PASS with a RETR, AUTH PLAIN, AUTH LOGIN.
    let mut c = TestClient::connect(pop3_addr).await;
    c.expect_prefix(b"+OK").await;
    c.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    c.expect_prefix(b"+OK").await;
    c.expect_prefix(b"+OK").await;
    c.send(b"RETR 1\r\n").await;
    c.expect_prefix(b"+OK").await;
    let body = c.read_dot_terminated().await;
    assert!(String::from_utf8_lossy(&body).contains(POP3_BODY));
    let mut c = TestClient::connect(pop3_addr).await;
    c.expect_prefix(b"+OK").await;
    c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await;
    c.expect_prefix(b"+OK").await;
    let mut c = TestClient::connect(pop3_addr).await;
    c.expect_prefix(b"+OK").await;
    c.send(b"AUTH LOGIN\r\n").await;
    c.expect_prefix(b"+ ").await;
    c.send(format!("{user64}\r\n").as_bytes()).await;
    c.expect_prefix(b"+ ").await;
    c.send(format!("{pass64}\r\n").as_bytes()).await;
    c.expect_prefix(b"+OK").await;

    // SMTP: AUTH LOGIN and a message; AUTH PLAIN refused after an error challenge.
    let mut c = TestClient::connect(smtp_addr).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO x\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("AUTH LOGIN {user64}\r\n").as_bytes()).await;
    c.expect_smtp(334).await;
    c.send(format!("{pass64}\r\n").as_bytes()).await;
    c.expect_smtp(235).await;
    c.send(format!("MAIL FROM:<{USER}>\r\nRCPT TO:<friend@example.test>\r\nDATA\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(&message(SMTP_BODY))).await;
    c.expect_smtp(250).await;
    let mut c = TestClient::connect(refusing_addr).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO x\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await;
    c.expect_smtp(535).await;

    // Graph: a large message through a draft and an upload session, once
    // sent and once failing in the upload (the draft deleted).
    let mut c = TestClient::connect(running.addrs[4]).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO x\r\n").await;
    c.expect_smtp(250).await;
    c.send(format!("AUTH PLAIN {plain}\r\n").as_bytes()).await;
    c.expect_smtp(235).await;
    let attachment = B64.encode(vec![0x5Au8; 3_500_000]);
    let mut large = format!(
        "Subject: private\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n{GRAPH_BODY}\r\n\
         --b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    );
    for line in attachment.as_bytes().chunks(76) {
        large.push_str(std::str::from_utf8(line).unwrap());
        large.push_str("\r\n");
    }
    large.push_str("--b--\r\n");
    for (fail, code) in [(None, 250), (Some(3), 451)] {
        *graph.state.fail_upload_put.lock().unwrap() = fail;
        c.send(
            format!("MAIL FROM:<{USER}>\r\nRCPT TO:<friend@example.test>\r\nDATA\r\n").as_bytes(),
        )
        .await;
        c.expect_smtp(250).await;
        c.expect_smtp(250).await;
        c.expect_smtp(354).await;
        c.send(&dot_stuff(large.as_bytes())).await;
        c.expect_smtp(code).await;
    }
    assert!(
        graph.state.calls().iter().any(|c| c.kind() == "PUT upload"),
        "the upload URL was used"
    );
    drop(c);
    running.shutdown().await;

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("logged in upstream")
            && log.contains("access token refreshed")
            && log.contains("large message sent through a Microsoft Graph draft")
            && log.contains("an upload session refused a range"),
        "the log was captured:\n{log}"
    );
    secrets.extend(tokens.state.issued_access_tokens());
    secrets.extend(tokens.state.latest_refresh_token());
    for secret in &secrets {
        assert!(
            !log.contains(secret.as_str()),
            "a secret ({} chars) is in the log",
            secret.len()
        );
        let b64 = B64.encode(secret);
        assert!(
            !log.contains(&b64[..b64.len().min(12)]),
            "a base64 secret is in the log"
        );
    }
    for sasl in [&plain, &pass64] {
        assert!(
            !log.contains(sasl.as_str()),
            "a SASL response is in the log"
        );
    }

    // Debug output of what holds secrets is redacted.
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    let shown = format!("{config:?}");
    assert!(!shown.contains(CLIENT_SECRET), "{shown}");
    let credentials = xoauth2_proxy::sasl::Credentials {
        username: USER.to_owned(),
        password: SecretString::from(PASSWORD.to_owned()),
    };
    assert!(!format!("{credentials:?}").contains(PASSWORD));
}

/// Runs the device code grant against the fake and stores the result as
/// `authorize` does; returns the tokens it obtained.
async fn sign_in(text: &str, state_dir: &Path, tokens: &FakeTokenServer) -> Vec<String> {
    use secrecy::ExposeSecret;
    tokens.state.set_pending_polls(0);
    let config = Config::parse(text, Path::new("test.toml")).unwrap();
    let http = xoauth2_proxy::http_client(&config).unwrap();
    let stored = xoauth2_proxy::auth::flows::device_code(&config.accounts[0], &http, |_| {})
        .await
        .expect("device code sign-in");
    let obtained = [&stored.refresh_token, &stored.access_token]
        .into_iter()
        .flatten()
        .map(|s| s.expose_secret().to_owned())
        .collect();
    harness::seal_tokens(state_dir, USER, PASSWORD, &stored);
    obtained
}
