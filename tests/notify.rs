//! Notifications end to end: `notify_command` is a small shell script that
//! records its environment, one file per call; the fake token endpoint
//! refuses the grant (`invalid_grant`) or answers, a dead upstream fails.
//! The notifier's clock is shortened through `Running::set_notify_timing`.
#![cfg(unix)]

mod harness;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::{GateLogin, PASSWORD, Proxy, config_text, dead_addr, imap, seed_tokens};
use secrecy::SecretString;
use support::token_server::Mode;
use support::*;
use xoauth2_proxy::notify::Timing;
use xoauth2_proxy::protocol::Failure;
use xoauth2_proxy::sasl::Credentials;

const POLL: Duration = Duration::from_millis(50);
/// Waits for something the notifier does: generous, for a loaded machine.
const LIMIT: Duration = Duration::from_secs(20);

fn creds() -> Credentials {
    Credentials {
        username: USER.into(),
        password: SecretString::from(PASSWORD.to_owned()),
    }
}

fn fast() -> Timing {
    Timing {
        poll_every: POLL,
        program_timeout: Duration::from_secs(10),
        ..Timing::default()
    }
}

/// One call of the recording script: its `XP_*` variables.
#[derive(Debug)]
struct Call {
    event: String,
    account: String,
    listener: String,
    message: String,
    page_url: String,
}

/// A script in `dir` that appends its environment to `dir/calls/`, one
/// file per call, named so they sort in call order; `body` runs after.
fn script(dir: &Path, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir.join("calls")).unwrap();
    let path = dir.join("notify.sh");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             f=\"{calls}/$(date +%s%N)-$$\"\n\
             printf '%s\\n' \"$XP_EVENT\" \"$XP_ACCOUNT\" \"$XP_LISTENER\" \"$XP_PAGE_URL\" \"$XP_MESSAGE\" > \"$f.tmp\"\n\
             mv \"$f.tmp\" \"$f\"\n\
             {body}\n",
            calls = dir.join("calls").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
    path
}

fn calls(dir: &Path) -> Vec<Call> {
    let mut names: Vec<_> = std::fs::read_dir(dir.join("calls"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none())
        .collect();
    names.sort();
    names
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            let mut lines = text.splitn(5, '\n').map(str::to_owned);
            let mut next = || lines.next().unwrap_or_default();
            Call {
                event: next(),
                account: next(),
                listener: next(),
                page_url: next(),
                message: next().trim_end().to_owned(),
            }
        })
        .collect()
}

async fn wait_for_calls(dir: &Path, n: usize) -> Vec<Call> {
    let started = Instant::now();
    loop {
        let seen = calls(dir);
        if seen.len() >= n {
            return seen;
        }
        assert!(
            started.elapsed() < LIMIT,
            "{} calls of notify_command, expected {n}: {seen:?}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A proxy with one IMAP listener (in front of `upstream`, or a fake IMAP
/// server) whose `notify_command` is `command`.
async fn proxy(
    command: &[&str],
    upstream: Option<std::net::SocketAddr>,
) -> (Proxy, FakeImapServer) {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().unwrap();
    seed_tokens(state_dir.path(), &tokens);
    let extra = format!(
        "admin_listen = \"127.0.0.1:0\"\nnotify_command = {:?}\n",
        command
    );
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(upstream.unwrap_or(server.addr))],
        &extra,
    );
    let proxy = Proxy::start(pki, tokens, state_dir, &text).await;
    proxy.running.set_notify_timing(fast());
    (proxy, server)
}

/// The local page's HTML.
async fn page(proxy: &Proxy) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = proxy.running.admin_addr.expect("the page is served");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET / HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
        addr.port()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn sign_in_needed_fires_once_and_recovered_once() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "exit 0");
    let (proxy, _server) = proxy(&[program.to_str().unwrap()], None).await;
    let ctx = &proxy.running.context;

    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    assert!(matches!(
        ctx.token_for(&creds()).await,
        Err(Failure::SignInNeeded(_))
    ));
    let seen = wait_for_calls(dir.path(), 1).await;
    let call = &seen[0];
    assert_eq!(call.event, "sign_in_needed");
    assert_eq!(call.account, USER);
    assert_eq!(call.listener, "", "an account event names no listener");
    assert!(call.message.contains("invalid_grant"), "{}", call.message);
    let port = proxy.running.admin_addr.unwrap().port();
    assert_eq!(call.page_url, format!("http://localhost:{port}/"));

    // Refused again: no second notification.
    assert!(matches!(
        ctx.token_for(&creds()).await,
        Err(Failure::SignInNeeded(_))
    ));
    tokio::time::sleep(POLL * 10).await;
    assert_eq!(calls(dir.path()).len(), 1, "{:?}", calls(dir.path()));

    // A refresh works again: `recovered`, once.
    proxy.tokens.state.set_mode(Mode::Normal);
    ctx.token_for(&creds()).await.expect("a token again");
    let seen = wait_for_calls(dir.path(), 2).await;
    assert_eq!(seen[1].event, "recovered");
    assert_eq!(seen[1].account, USER);
    ctx.token_for(&creds()).await.expect("a token");

    // Refused again within six hours: not said again, so nothing recovers.
    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    ctx.gate.tokens().discard_access_token(USER);
    let _ = ctx.token_for(&creds()).await;
    tokio::time::sleep(POLL * 10).await;
    proxy.tokens.state.set_mode(Mode::Normal);
    ctx.token_for(&creds()).await.expect("a token again");
    tokio::time::sleep(POLL * 10).await;
    let seen = calls(dir.path());
    assert_eq!(
        seen.iter().map(|c| c.event.as_str()).collect::<Vec<_>>(),
        ["sign_in_needed", "recovered"],
        "{seen:?}"
    );

    // The page shows the same events.
    let html = page(&proxy).await;
    assert!(html.contains("Recent notifications"), "{html}");
    assert!(html.contains("data-event=\"sign_in_needed\""), "{html}");
    assert!(html.contains("data-event=\"recovered\""), "{html}");
    proxy.running.shutdown().await;
}

#[tokio::test]
async fn an_unreachable_upstream_names_the_listener() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "exit 0");
    let dead = dead_addr().await;
    let (proxy, _server) = proxy(&[program.to_str().unwrap()], Some(dead)).await;
    proxy.running.set_notify_timing(Timing {
        upstream_unreachable_after: Duration::ZERO,
        ..fast()
    });
    // A client connects; the session's upstream connect fails.
    let mut c = TestClient::connect(proxy.addr(0)).await;
    let _greeting = c.read_line_str().await;
    let seen = wait_for_calls(dir.path(), 1).await;
    assert_eq!(seen[0].event, "upstream_unreachable");
    assert_eq!(seen[0].account, "", "a listener event names no account");
    assert_eq!(seen[0].listener, format!("imap {}", proxy.addr(0)));
    assert!(
        seen[0].message.contains(&dead.to_string()),
        "{}",
        seen[0].message
    );
    proxy.running.shutdown().await;
}

/// Whether process `pid` is gone (or a zombie nobody waits for).
fn gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test]
async fn a_hanging_program_is_killed_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let program = script(
        dir.path(),
        &format!("echo $$ > {}\nexec sleep 600", pid_file.display()),
    );
    let (proxy, _server) = proxy(&[program.to_str().unwrap()], None).await;
    let timeout = Duration::from_millis(500);
    proxy.running.set_notify_timing(Timing {
        program_timeout: timeout,
        ..fast()
    });
    let ctx = &proxy.running.context;
    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    let _ = ctx.token_for(&creds()).await;
    wait_for_calls(dir.path(), 1).await;
    let started = Instant::now();
    let pid: u32 = loop {
        if let Ok(text) = std::fs::read_to_string(&pid_file)
            && let Ok(pid) = text.trim().parse()
        {
            break pid;
        }
        assert!(started.elapsed() < LIMIT, "the script never wrote its pid");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(!gone(pid), "the program runs until its timeout");
    while !gone(pid) {
        assert!(
            started.elapsed() < timeout + LIMIT,
            "process {pid} still runs after the {timeout:?} timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The proxy goes on.
    proxy.tokens.state.set_mode(Mode::Normal);
    ctx.token_for(&creds()).await.expect("a token");
    proxy.running.shutdown().await;
}

#[tokio::test]
async fn a_failing_program_does_not_stop_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let program = script(dir.path(), "echo 'cannot send' >&2\nexit 3");
    let (proxy, _server) = proxy(&[program.to_str().unwrap(), "--flag"], None).await;
    let ctx = &proxy.running.context;
    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    let _ = ctx.token_for(&creds()).await;
    wait_for_calls(dir.path(), 1).await;
    proxy.tokens.state.set_mode(Mode::Normal);
    // Mail goes on: a client logs in through the listener.
    let mut c = TestClient::connect(proxy.addr(0)).await;
    let greeting = c.read_line_str().await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    c.send(format!("a1 LOGIN {USER} \"{PASSWORD}\"\r\n").as_bytes())
        .await;
    let line = loop {
        let line = c.read_line_str().await;
        if line.starts_with("a1 ") {
            break line;
        }
    };
    assert!(line.starts_with("a1 OK"), "{line}");
    wait_for_calls(dir.path(), 2).await;
    proxy.running.shutdown().await;
}

#[tokio::test]
async fn a_missing_program_is_refused_by_the_configuration() {
    let e = xoauth2_proxy::config::Config::parse(
        "[proxy]\nnotify_command = [\"notify-send\", \"hi\"]\n",
        Path::new("t.toml"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("proxy.notify_command") && e.contains("absolute path"),
        "{e}"
    );
}

#[tokio::test]
async fn a_reload_sends_through_the_new_command_and_keeps_what_was_said() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    let program = script(first.path(), "exit 0");
    let (proxy, server) = proxy(&[program.to_str().unwrap()], None).await;
    let ctx = proxy.running.context.clone();
    proxy.tokens.state.set_mode(Mode::InvalidGrant);
    let _ = ctx.token_for(&creds()).await;
    wait_for_calls(first.path(), 1).await;

    // The same configuration with another program.
    let next = script(second.path(), "exit 0");
    let text = config_text(
        &proxy.pki,
        proxy.state_dir.path(),
        &proxy.tokens.url(),
        &[imap(server.addr)],
        &format!(
            "admin_listen = \"127.0.0.1:0\"\nnotify_command = {:?}\n",
            [next.to_str().unwrap()]
        ),
    );
    let config = xoauth2_proxy::config::Config::parse(&text, Path::new("t.toml")).unwrap();
    let Proxy {
        pki: _pki,
        tokens,
        state_dir: _state_dir,
        running,
    } = proxy;
    let (running, outcome) = running.reload(config).await;
    outcome.expect("reloaded");
    // Still refused under the new configuration: already said, not again.
    let ctx = running.context.clone();
    let _ = ctx.token_for(&creds()).await;
    tokio::time::sleep(POLL * 10).await;
    assert!(
        calls(second.path()).is_empty(),
        "{:?}",
        calls(second.path())
    );
    // Recovered: through the new program.
    tokens.state.set_mode(Mode::Normal);
    ctx.token_for(&creds()).await.expect("a token");
    let seen = wait_for_calls(second.path(), 1).await;
    assert_eq!(seen[0].event, "recovered");
    assert_eq!(calls(first.path()).len(), 1);
    running.shutdown().await;
}
