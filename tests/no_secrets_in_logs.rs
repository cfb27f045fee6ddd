//! Passwords, access tokens and refresh tokens never reach a log line, at
//! any level, on success or failure. This binary installs a global TRACE
//! subscriber, so it holds a single test.

mod harness;
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{PASSWORD, SEED_REFRESH, config_text, imap, seed_tokens, smtp, start};
use support::*;

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
    let imap_server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let smtp_server = FakeSmtpServer::start(
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
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(imap_server.addr), smtp(smtp_server.addr)],
        "",
    );
    let running = start(&text).await;

    // A successful IMAP login, a refused one, and a refused SMTP AUTH with an error challenge.
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.read_line().await;
    c.send(format!("a LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    assert!(c.read_line_str().await.starts_with("a OK"));
    let mut c = TestClient::connect(running.addrs[0]).await;
    c.read_line().await;
    c.send(format!("b LOGIN nobody@example.test {PASSWORD}\r\n").as_bytes())
        .await;
    assert!(c.read_line_str().await.starts_with("b NO"));
    let mut c = TestClient::connect(running.addrs[1]).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO x\r\n").await;
    c.expect_smtp(250).await;
    c.send(
        format!(
            "AUTH PLAIN {}\r\n",
            B64.encode(format!("\0{USER}\0{PASSWORD}"))
        )
        .as_bytes(),
    )
    .await;
    c.expect_smtp(535).await;
    running.shutdown().await;

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("logged in upstream"),
        "the log was captured:\n{log}"
    );
    let mut secrets = vec![PASSWORD.to_owned(), SEED_REFRESH.to_owned()];
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
    assert!(!log.contains(&B64.encode(format!("\0{USER}\0{PASSWORD}"))));
}
