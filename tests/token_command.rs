//! `xoauth2-proxy token ACCOUNT`: the binary asks the running proxy (here
//! `xoauth2_proxy::run` in-process, with its control socket) for a token;
//! the token is the proxy's, accepted by the fake IMAP server's XOAUTH2
//! check, refreshed through the proxy's one refresh, and a wrong password
//! gets nothing and counts as a failed login.
#![cfg(unix)]

mod harness;
mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use harness::{Listener, PASSWORD, SEED_REFRESH, Setup, imap, seal_tokens, setup};
use secrecy::SecretString;
use support::*;
use xoauth2_proxy::auth::vault::StoredTokens;
use xoauth2_proxy::config::Config;

/// A proxy run as `xoauth2-proxy run` runs it, until dropped.
struct RunningProxy {
    setup: Setup,
    imap: FakeImapServer,
    config: PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningProxy {
    async fn start(setup: Setup) -> RunningProxy {
        let imap =
            FakeImapServer::start(&setup.pki, setup.tokens.state.clone(), ImapOpts::default())
                .await;
        let upstream = harness::imap(imap.addr);
        let text = setup.config(
            &[Listener {
                upstream: &upstream,
                listen: "127.0.0.1:0",
                extra: "",
            }],
            "",
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("proxy.toml");
        std::fs::write(&config, &text).expect("write the configuration");
        let parsed = Config::load(&config).expect("the configuration is valid");
        let path = config.clone();
        let reloads = xoauth2_proxy::control::Reloads::new(move || Ok(Config::load(&path)?));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(xoauth2_proxy::run(
            parsed,
            async move {
                let _ = stopped.await;
            },
            reloads,
        ));
        let socket = setup.state_dir.path().join("control.sock");
        let started = Instant::now();
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no control socket"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RunningProxy {
            setup,
            imap,
            config,
            _dir: dir,
            stop: Some(stop),
            task,
        }
    }

    fn state_dir(&self) -> &Path {
        self.setup.state_dir.path()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().expect("running").send(());
        (&mut self.task)
            .await
            .expect("the proxy task")
            .expect("the proxy stops cleanly");
    }
}

/// Runs `xoauth2-proxy --config CONFIG token ARGS` with `stdin` as input.
async fn token_command(config: &Path, args: &[&str], stdin: &str) -> Output {
    let exe = env!("CARGO_BIN_EXE_xoauth2-proxy");
    let mut command = std::process::Command::new(exe);
    command
        .arg("--config")
        .arg(config)
        .arg("token")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let stdin = stdin.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = command.spawn().expect("start the token command");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write the password");
        child.wait_with_output().expect("the token command ends")
    })
    .await
    .expect("the blocking task")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 on stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Logs in to the fake IMAP server directly with the XOAUTH2 string `b64`.
async fn imap_accepts(server: &FakeImapServer, pki: &TestPki, b64: &str) -> bool {
    let mut client = TestClient::connect_tls(server.addr, pki.client_config.clone()).await;
    client.expect_prefix(b"* OK").await;
    client
        .send_line(&format!("a AUTHENTICATE XOAUTH2 {b64}"))
        .await;
    loop {
        let line = client.read_line_str().await;
        if line.starts_with("+ ") {
            // The error challenge: answered empty, then the refusal.
            client.send_line("").await;
            continue;
        }
        if let Some(rest) = line.strip_prefix("a ") {
            return rest.starts_with("OK");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_token_logs_in_to_the_mail_server_and_xoauth2_decodes() {
    let proxy = RunningProxy::start(setup().await).await;
    let tokens = proxy.setup.tokens.state.clone();

    let out = token_command(
        &proxy.config,
        &[USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let token = printed.strip_suffix('\n').expect("one line");
    assert!(!token.is_empty() && !token.contains('\n'), "{printed:?}");
    assert!(tokens.is_valid_access_token(token));
    assert!(
        imap_accepts(&proxy.imap, &proxy.setup.pki, &xoauth2(USER, token)).await,
        "the fake IMAP server refused the printed token"
    );
    // The seeded sign-in had no access token: the proxy refreshed once.
    assert_eq!(tokens.requests("refresh_token"), 1);
    assert!(!stderr(&out).contains(token), "the token leaked to stderr");
    assert!(!stderr(&out).contains(PASSWORD));

    // `--xoauth2`: the SASL string of the same (cached) token.
    let out = token_command(
        &proxy.config,
        &[USER, "--password-stdin", "--xoauth2"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = stdout(&out);
    let b64 = printed.strip_suffix('\n').expect("one line");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64");
    assert_eq!(
        String::from_utf8(decoded).expect("utf-8"),
        format!("user={USER}\x01auth=Bearer {token}\x01\x01")
    );
    assert!(imap_accepts(&proxy.imap, &proxy.setup.pki, b64).await);
    assert_eq!(
        tokens.requests("refresh_token"),
        1,
        "the cached token was not used"
    );

    // The reload protocol on the same socket still works.
    xoauth2_proxy::control::request_reload(proxy.state_dir())
        .await
        .expect("reload through the control socket");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_gets_nothing_and_counts_as_a_failed_login() {
    let proxy = RunningProxy::start(setup().await).await;
    let tokens = proxy.setup.tokens.state.clone();
    let wrong = "not-the-password";
    let failures = xoauth2_proxy::auth::throttle::FREE_FAILURES;
    for _ in 0..failures {
        let out = token_command(
            &proxy.config,
            &[USER, "--password-stdin"],
            &format!("{wrong}\n"),
        )
        .await;
        assert!(!out.status.success());
        assert_eq!(stdout(&out), "", "something on stdout for a wrong password");
        let err = stderr(&out);
        assert!(err.contains("no token"), "{err}");
        assert!(!err.contains(wrong), "the password leaked: {err}");
    }
    assert_eq!(
        tokens.total_requests(),
        0,
        "a wrong password reached the token endpoint"
    );

    // The failures were counted by the login throttle: the next attempt of
    // this local user at this account waits its delay first.
    let delay = xoauth2_proxy::auth::throttle::delay_after(failures);
    assert!(delay > Duration::ZERO);
    let started = Instant::now();
    let out = token_command(
        &proxy.config,
        &[USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        started.elapsed() >= delay,
        "not throttled after {failures} wrong passwords: {:?}",
        started.elapsed()
    );
    assert!(tokens.is_valid_access_token(stdout(&out).trim_end()));

    // An unknown account: refused, nothing on stdout.
    let out = token_command(
        &proxy.config,
        &["nobody@example.test", "--password-stdin"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
    assert!(stderr(&out).contains("no token"), "{}", stderr(&out));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_near_expiry_is_refreshed_once_by_the_proxy() {
    let setup = setup().await;
    let old = setup.tokens.state.issue_access_token();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    seal_tokens(
        setup.state_dir.path(),
        USER,
        PASSWORD,
        &StoredTokens {
            refresh_token: Some(SecretString::from(SEED_REFRESH.to_owned())),
            access_token: Some(SecretString::from(old.clone())),
            // Inside any refresh margin, still valid.
            expires_at: Some(now + 20),
        },
    );
    let proxy = RunningProxy::start(setup).await;
    let tokens = proxy.setup.tokens.state.clone();
    // Slow the endpoint down so both commands ask while one refresh runs.
    tokens.set_delay(Duration::from_millis(500));
    let input = format!("{PASSWORD}\n");
    let (a, b) = tokio::join!(
        token_command(&proxy.config, &[USER, "--password-stdin"], &input),
        token_command(&proxy.config, &[USER, "--password-stdin"], &input),
    );
    for out in [&a, &b] {
        assert!(out.status.success(), "{}", stderr(out));
    }
    let (ta, tb) = (stdout(&a), stdout(&b));
    assert_eq!(ta, tb, "two refreshes handed out two tokens");
    let token = ta.trim_end();
    assert_ne!(token, old, "the token near expiry was handed out");
    assert!(tokens.is_valid_access_token(token));
    assert_eq!(
        tokens.requests("refresh_token"),
        1,
        "not exactly one refresh"
    );
    assert!(imap_accepts(&proxy.imap, &proxy.setup.pki, &xoauth2(USER, token)).await);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_running_proxy_and_no_sign_in_are_said_clearly() {
    // A configuration whose state_dir no proxy uses.
    let setup = setup().await;
    let upstream = imap(harness::dead_addr().await);
    let text = setup.config(
        &[Listener {
            upstream: &upstream,
            listen: "127.0.0.1:0",
            extra: "",
        }],
        "",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    std::fs::write(&config, text).expect("write");
    let out = token_command(
        &config,
        &[USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(err.contains("no proxy answers"), "{err}");
    assert!(err.contains("is `xoauth2-proxy run` running"), "{err}");

    // A running proxy whose account never signed in: where to sign in.
    let fresh = Setup {
        pki: TestPki::new(),
        tokens: FakeTokenServer::start().await,
        state_dir: tempfile::tempdir().expect("tempdir"),
    };
    let proxy = RunningProxy::start(fresh).await;
    let out = token_command(
        &proxy.config,
        &[USER, "--password-stdin"],
        &format!("{PASSWORD}\n"),
    )
    .await;
    assert!(!out.status.success());
    assert_eq!(stdout(&out), "");
    let err = stderr(&out);
    assert!(err.contains("must sign in"), "{err}");
    assert!(
        err.contains(&format!("xoauth2-proxy authorize {USER}")),
        "{err}"
    );
    proxy.stop().await;
}
