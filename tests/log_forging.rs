//! A client cannot write a log line of its own: user names with line
//! breaks are refused before anything is logged, and what a client chose
//! that is logged (a user name the gate refuses, a refused sender) is
//! escaped. Replays the finding: an SMTP `AUTH LOGIN` user name with a line
//! break wrote a forged `INFO … logged in upstream … account=ceo@…` line.
//! This binary installs a global subscriber, so it holds a single test.

mod harness;
mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{Listener, PASSWORD, setup, smtp, start};
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

const FORGED: &str = "2026-12-01T00:00:00.000000Z  INFO xoauth2_proxy::session::upstream_auth: logged in upstream peer=127.0.0.1:1 account=ceo@example.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_forge_a_log_line() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        // The proxy's own lines at every level (rustls's pretty-printed
        // TRACE output spans lines by design and is not the proxy's).
        .with_env_filter("xoauth2_proxy=trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let s = setup().await;
    let login_server =
        FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let relay_server =
        FakeSmtpServer::start(&s.pki, s.tokens.state.clone(), SmtpOpts::default()).await;
    let pop3_server =
        FakePop3Server::start(&s.pki, s.tokens.state.clone(), Pop3Opts::default()).await;
    let (m, r, p) = (
        smtp(login_server.addr),
        smtp(relay_server.addr),
        harness::pop3(pop3_server.addr),
    );
    let relay_extra = format!(
        "allow_from = [\"127.0.0.0/8\"]\nallow_plaintext = true\nfixed_account = \"{USER}\"\n\
         allowed_senders = [\"scanner@example.test\"]"
    );
    let mut text = s.config(
        &[
            Listener {
                upstream: &m,
                listen: "127.0.0.1:0",
                extra: "",
            },
            Listener {
                upstream: &r,
                listen: "127.0.0.2:0",
                extra: &relay_extra,
            },
            Listener {
                upstream: &p,
                listen: "127.0.0.1:0",
                extra: "",
            },
        ],
        "",
    );
    let hash = xoauth2_proxy::auth::password::hash_password(b"unused by the relay").unwrap();
    text.push_str(&format!("password_hash = \"{hash}\"\n"));
    // An unattended account's sign-in stores its tokens unsealed.
    harness::seed_unattended_tokens(s.state_dir.path(), &s.tokens);
    let running = start(&text).await;
    let (smtp_addr, relay_addr, pop3_addr) = (running.addrs[0], running.addrs[1], running.addrs[2]);

    let line_breaks = [
        format!("x\n{FORGED}"),
        format!("x\r\n{FORGED}"),
        format!("x\r{FORGED}"),
        format!("x\u{85}{FORGED}"),
    ];
    // The finding's attack, and its PLAIN and POP3 forms: refused, no login.
    for name in &line_breaks {
        let mut c = TestClient::connect(smtp_addr).await;
        c.expect_smtp(220).await;
        c.send(b"EHLO client\r\n").await;
        c.expect_smtp(250).await;
        c.send(b"AUTH LOGIN\r\n").await;
        c.expect_smtp(334).await;
        c.send(format!("{}\r\n", B64.encode(name)).as_bytes()).await;
        c.expect_smtp(501).await;
        c.send(
            format!(
                "AUTH PLAIN {}\r\n",
                B64.encode(format!("\0{name}\0{PASSWORD}"))
            )
            .as_bytes(),
        )
        .await;
        c.expect_smtp(501).await;
        let mut c = TestClient::connect(pop3_addr).await;
        c.expect_prefix(b"+OK").await;
        c.send(
            format!(
                "AUTH PLAIN {}\r\n",
                B64.encode(format!("\0{name}\0{PASSWORD}"))
            )
            .as_bytes(),
        )
        .await;
        c.expect_prefix(b"-ERR the user name contains control characters")
            .await;
    }
    // What is logged still cannot break a line or hide itself: a name with a
    // line separator or a bidirectional override (not control characters)
    // is logged escaped when the gate refuses it.
    for name in ["x\u{2028}INFO forged", "x\u{202e}gro.elpmaxe@oec"] {
        let mut c = TestClient::connect(smtp_addr).await;
        c.expect_smtp(220).await;
        c.send(b"EHLO client\r\n").await;
        c.expect_smtp(250).await;
        c.send(
            format!(
                "AUTH PLAIN {}\r\n",
                B64.encode(format!("\0{name}\0{PASSWORD}"))
            )
            .as_bytes(),
        )
        .await;
        c.expect_smtp(535).await;
    }
    // A fixed-account relay logs the senders it refuses, before and after
    // the first message.
    let mut c = TestClient::connect_from(relay_addr, "127.0.0.3".parse().unwrap()).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO scanner\r\n").await;
    c.expect_smtp(250).await;
    c.send("MAIL FROM:<ce\u{202e}o@example.test>\r\n".as_bytes())
        .await;
    c.expect_smtp(550).await;
    c.send(b"MAIL FROM:<scanner@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(250).await;
    c.expect_smtp(354).await;
    c.send("hi\r\n.\r\nMAIL FROM:<c\\eo\u{2066}@example.test>\r\n".as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.expect_smtp(550).await;
    c.send(b"QUIT\r\n").await;
    c.expect_smtp(221).await;
    running.shutdown().await;

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("login refused locally") && log.contains("not in allowed_senders"),
        "the log was captured:\n{log}"
    );
    assert!(!log.contains("ceo@example.test logged in"), "{log}");
    assert_eq!(
        log.matches("logged in upstream").count(),
        1,
        "only the relay's own sign-in:\n{log}"
    );
    for line in log.lines() {
        assert!(
            line.starts_with("20"),
            "a line that does not start with a timestamp: {line:?}"
        );
    }
    for raw in ['\r', '\0', '\u{85}', '\u{2028}', '\u{2066}', '\u{202e}'] {
        assert!(!log.contains(raw), "{raw:?} unescaped in the log:\n{log}");
    }
    for escaped in [
        "x\\u{2028}INFO forged",
        "x\\u{202e}gro.elpmaxe@oec",
        "ce\\u{202e}o@example.test",
        "c\\\\eo\\u{2066}@example.test",
    ] {
        assert!(log.contains(escaped), "{escaped} not in the log:\n{log}");
    }
}
