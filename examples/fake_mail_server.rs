//! The hermetic tests' fake IMAP server (`tests/support/imap_server.rs`, TLS
//! from the first byte with a certificate of the test CA, XOAUTH2 only) and
//! the fake token endpoint it checks tokens against (`FakeTokenServer`, plain
//! HTTP on loopback), as one stand-alone process: the upstream side of the
//! Windows service check under wine (`.ci/wine.sh`).
//!
//! ```sh
//! cargo run --example fake_mail_server -- --dir /tmp/fake
//! ```
//!
//! Writes `ca.pem` (the test CA, for the proxy's `ca_file`) and `message.eml`
//! (message 1 of the INBOX) into `--dir`, prints `token_url URL` and then
//! `listening on imaps://ADDR` once both accept connections, and serves
//! until it gets SIGINT or SIGTERM.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;

use support::{FakeImapServer, FakeTokenServer, ImapOpts, TestPki, TokenState, USER};

#[derive(Parser)]
#[command(about = "The tests' fake IMAP server and token endpoint, stand-alone")]
struct Args {
    /// Where to write `ca.pem` and `message.eml`.
    #[arg(long)]
    dir: PathBuf,
    /// Size of the INBOX's one message, in bytes.
    #[arg(long, default_value_t = 4000)]
    message_size: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pki = TestPki::new();
    let message = support::message(args.message_size, 1);
    let ca_file = args.dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem)
        .with_context(|| format!("cannot write {}", ca_file.display()))?;
    let message_file = args.dir.join("message.eml");
    std::fs::write(&message_file, &message)
        .with_context(|| format!("cannot write {}", message_file.display()))?;

    let state = Arc::new(TokenState::new());
    let tokens = FakeTokenServer::start_with(state.clone()).await;
    let imap = FakeImapServer::start(
        &pki,
        state,
        ImapOpts {
            user: USER.to_owned(),
            messages: vec![message],
            ..ImapOpts::default()
        },
    )
    .await;
    println!("token_url {}", tokens.url());
    println!("listening on imaps://{}", imap.addr);
    std::io::stdout().flush()?;

    stopped().await?;
    println!(
        "stopping: {} IMAP connection(s), {} XOAUTH2 login(s) accepted",
        imap.state.connections(),
        imap.state.auth_successes()
    );
    Ok(())
}

/// Resolves on SIGINT (or SIGTERM on Unix), so the fakes and the test CA's
/// temporary directory are dropped.
async fn stopped() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("SIGINT handler")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("Ctrl-C handler")?;
    Ok(())
}
