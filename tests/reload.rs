//! Reloading the configuration without a restart: listeners added, kept and
//! removed, sessions already relaying untouched, a failed reload changing
//! nothing; and the same through the binary (`xoauth2-proxy reload`, SIGHUP).

mod harness;
mod support;

#[cfg(unix)]
use std::time::{Duration, Instant};

use harness::{GateLogin, PASSWORD, config_text, imap, pop3, seed_tokens, start};
use support::*;
use xoauth2_proxy::config::Config;

fn parse(text: &str) -> Config {
    Config::parse(text, std::path::Path::new("test.toml")).expect("test config is valid")
}

async fn imap_login(c: &mut TestClient, tag: &str) {
    c.send(format!("{tag} LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    let lines = c.read_until_tagged(tag).await;
    let last = String::from_utf8_lossy(lines.last().expect("tagged")).into_owned();
    assert!(last.starts_with(&format!("{tag} OK")), "{last}");
}

#[tokio::test]
async fn a_reload_adds_keeps_and_removes_listeners_and_leaves_sessions_alone() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let imap_server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let pop3_server = FakePop3Server::start(&pki, tokens.state.clone(), Pop3Opts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let only_imap = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(imap_server.addr)],
        "",
    );
    let running = start(&only_imap).await;
    let imap_addr = running.addrs[0];
    let mut relaying = TestClient::connect(imap_addr).await;
    relaying.read_line().await;
    imap_login(&mut relaying, "a").await;

    // Add a POP3 listener; the IMAP one (same `listen`) keeps its socket.
    let both = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(imap_server.addr), pop3(pop3_server.addr)],
        "",
    );
    let (running, outcome) = running.reload(parse(&both)).await;
    outcome.expect("reload");
    assert_eq!(running.addrs.len(), 2);
    assert_eq!(running.addrs[0], imap_addr);
    relaying.send(b"b NOOP\r\n").await;
    relaying.expect_prefix(b"b OK").await;
    let mut p = TestClient::connect(running.addrs[1]).await;
    p.expect_prefix(b"+OK").await;
    p.send(format!("USER {USER}\r\nPASS {PASSWORD}\r\n").as_bytes())
        .await;
    p.expect_prefix(b"+OK").await;
    p.expect(b"+OK User successfully authenticated.").await;
    let mut fresh = TestClient::connect(imap_addr).await;
    fresh.read_line().await;
    imap_login(&mut fresh, "c").await;

    // A reload that cannot be applied (an address in use) changes nothing.
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let taken_addr = taken.local_addr().unwrap().to_string();
    let (up_imap, up_pop3) = (imap(imap_server.addr), pop3(pop3_server.addr));
    let bad = harness::config_text_listeners(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[
            harness::Listener {
                upstream: &up_imap,
                listen: "127.0.0.1:0",
                extra: "",
            },
            harness::Listener {
                upstream: &up_pop3,
                listen: &taken_addr,
                extra: "",
            },
        ],
        "",
    );
    let addrs_before = running.addrs.clone();
    let (running, outcome) = running.reload(parse(&bad)).await;
    let e = outcome.expect_err("the address is taken");
    assert!(e.to_string().contains("cannot listen"), "{e:#}");
    assert_eq!(running.addrs, addrs_before);
    let mut still = TestClient::connect(imap_addr).await;
    still.read_line().await;

    // Remove the IMAP listener: its port closes, its sessions go on.
    let only_pop3 = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[pop3(pop3_server.addr)],
        "",
    );
    let (running, outcome) = running.reload(parse(&only_pop3)).await;
    outcome.expect("reload");
    assert_eq!(running.addrs.len(), 1);
    assert!(tokio::net::TcpStream::connect(imap_addr).await.is_err());
    relaying.send(b"d NOOP\r\n").await;
    relaying.expect_prefix(b"d OK").await;
    relaying.send(b"e LOGOUT\r\n").await;
    relaying.read_until_tagged("e").await;
    drop((p, fresh, still));
    running.shutdown().await;
}

#[cfg(unix)] // for the SIGHUP test below
fn free_port() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

#[cfg(unix)] // for the SIGHUP test below
fn listener(addr: std::net::SocketAddr, upstream: std::net::SocketAddr) -> String {
    format!(
        "[[listener]]\nprotocol = \"imap\"\nlisten = \"{addr}\"\nupstream = \"{upstream}\"\nupstream_tls = \"implicit\"\n\n"
    )
}

#[cfg(unix)]
/// Waits until `addr` greets like an IMAP server (the proxy's local
/// greeting: the upstream here is down).
async fn greets(addr: std::net::SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await
                && buf[..n].starts_with(b"* OK")
            {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[cfg(unix)]
#[tokio::test]
async fn the_binary_reloads_on_request_and_on_sighup_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    let upstream = harness::dead_addr().await;
    let head = format!(
        "[proxy]\nstate_dir = {:?}\nconnect_timeout_secs = 2\nshutdown_grace_secs = 1\n\n",
        dir.path().display().to_string()
    );
    let (a, b, c) = (free_port(), free_port(), free_port());
    std::fs::write(&config, format!("{head}{}", listener(a, upstream))).unwrap();
    let exe = env!("CARGO_BIN_EXE_xoauth2-proxy");
    let mut proxy = std::process::Command::new(exe)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the proxy");
    assert!(greets(a).await, "the proxy did not start");

    // `xoauth2-proxy reload` adds a listener and says so.
    std::fs::write(
        &config,
        format!("{head}{}{}", listener(a, upstream), listener(b, upstream)),
    )
    .unwrap();
    let out = std::process::Command::new(exe)
        .arg("--config")
        .arg(&config)
        .arg("reload")
        .output()
        .expect("reload");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(greets(b).await, "the new listener does not answer");

    // A broken file is reported, and the running configuration stays.
    std::fs::write(&config, format!("{head}[[listener]]\nprotocol = 7\n")).unwrap();
    let out = std::process::Command::new(exe)
        .arg("--config")
        .arg(&config)
        .arg("reload")
        .output()
        .expect("reload");
    assert!(!out.status.success());
    assert!(greets(b).await);

    // SIGHUP reloads too.
    std::fs::write(
        &config,
        format!(
            "{head}{}{}{}",
            listener(a, upstream),
            listener(b, upstream),
            listener(c, upstream)
        ),
    )
    .unwrap();
    // SAFETY: a signal to the child this test started.
    unsafe { libc::kill(proxy.id() as i32, libc::SIGHUP) };
    assert!(greets(c).await, "SIGHUP did not reload");

    // SIGTERM stops it cleanly within the grace time.
    let started = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(proxy.id() as i32, libc::SIGTERM) };
    let status = loop {
        if let Some(status) = proxy.try_wait().expect("wait") {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the proxy did not stop"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
    assert!(!dir.path().join("control.sock").exists());
}

#[tokio::test]
async fn a_reload_keeps_unchanged_accounts_unlocked_and_relocks_changed_ones() {
    use secrecy::SecretString;
    use xoauth2_proxy::sasl::Credentials;
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let imap_server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(imap_server.addr)],
        "",
    );
    let creds = Credentials {
        username: USER.into(),
        password: SecretString::from(PASSWORD.to_owned()),
    };
    let running = start(&text).await;
    running
        .context
        .token_for(&creds)
        .await
        .expect("first login");
    assert_eq!(running.context.gate.tokens().kdf_runs(), 1);
    let refreshes = tokens.state.total_requests();

    // The same account (the file re-read, a listener setting changed).
    let (running, outcome) = running
        .reload(parse(&text.replace(
            "connect_timeout_secs = 5",
            "connect_timeout_secs = 6",
        )))
        .await;
    outcome.expect("reload");
    running
        .context
        .token_for(&creds)
        .await
        .expect("login after reload");
    assert_eq!(
        running.context.gate.tokens().kdf_runs(),
        0,
        "no KDF run: the unlock was kept"
    );
    assert_eq!(
        tokens.state.total_requests(),
        refreshes,
        "nor a token request"
    );
    let wrong = Credentials {
        username: USER.into(),
        password: SecretString::from("not-it".to_owned()),
    };
    assert!(running.context.token_for(&wrong).await.is_err());

    // A changed account (another client id) starts over: its password is
    // checked against the seal again.
    let (running, outcome) = running
        .reload(parse(&text.replace(
            "client_id = \"test-client\"",
            "client_id = \"other-app\"",
        )))
        .await;
    outcome.expect("reload");
    running.context.token_for(&creds).await.expect("login");
    assert_eq!(running.context.gate.tokens().kdf_runs(), 1);
    running.shutdown().await;
}
