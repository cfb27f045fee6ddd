//! The sealed token vault and the local password, end to end: a fake token
//! endpoint, a fake TLS IMAP server, the proxy with its production KDF
//! parameters, and the token file on disk.

mod harness;
mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use harness::{GateLogin, PASSWORD, Proxy, config_text, imap, seed_tokens, start};
use secrecy::{ExposeSecret, SecretString};
use support::token_server::GRANT_REFRESH;
use support::*;
use xoauth2_proxy::auth::password::SealKey;
use xoauth2_proxy::auth::throttle::{LOCKOUT, LOCKOUT_FAILURES};
use xoauth2_proxy::auth::vault::{Entry, TokenStore};
use xoauth2_proxy::protocol::Failure;
use xoauth2_proxy::sasl::Credentials;

async fn proxy_with_extra(account_extra: &str) -> (Proxy, FakeImapServer) {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    if account_extra.contains("password_hash") {
        // An unattended account's sign-in stores its tokens unsealed.
        tokens.state.seed_refresh_token(harness::SEED_REFRESH);
        TokenStore::new(state_dir.path())
            .save(
                USER,
                &xoauth2_proxy::auth::vault::StoredTokens {
                    refresh_token: Some(SecretString::from(harness::SEED_REFRESH.to_owned())),
                    access_token: None,
                    expires_at: None,
                },
            )
            .unwrap();
    } else {
        seed_tokens(state_dir.path(), &tokens);
    }
    let mut text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    );
    text.push_str(account_extra);
    (Proxy::start(pki, tokens, state_dir, &text).await, server)
}

async fn proxy() -> (Proxy, FakeImapServer) {
    proxy_with_extra("").await
}

/// Logs in over IMAP and returns the tagged reply line.
async fn imap_login(proxy: &Proxy, password: &str) -> String {
    let mut c = TestClient::connect(proxy.addr(0)).await;
    let greeting = c.read_line_str().await;
    assert!(greeting.starts_with("* OK "), "{greeting}");
    c.send(format!("a1 LOGIN {USER} \"{password}\"\r\n").as_bytes())
        .await;
    loop {
        let line = c.read_line_str().await;
        if line.starts_with("a1 ") {
            return line;
        }
    }
}

fn file_of(state_dir: &Path) -> Vec<u8> {
    std::fs::read(TokenStore::new(state_dir).path_for(USER)).expect("token file")
}

fn open_sealed(state_dir: &Path, password: &str) -> xoauth2_proxy::auth::vault::StoredTokens {
    match TokenStore::new(state_dir)
        .load_entry(USER)
        .unwrap()
        .unwrap()
    {
        Entry::Sealed(s) => {
            let key = SealKey::derive(password.as_bytes(), s.params(), s.salt()).unwrap();
            s.open(&key).expect("the password opens the seal")
        }
        Entry::Unsealed(_) => panic!("the tokens are not sealed"),
    }
}

fn creds(password: &str) -> Credentials {
    Credentials {
        username: USER.into(),
        password: SecretString::from(password.to_owned()),
    }
}

#[tokio::test]
async fn the_sign_in_password_opens_the_seal_and_a_wrong_one_never_leaves_the_machine() {
    let (proxy, server) = proxy().await;
    let line = imap_login(&proxy, PASSWORD).await;
    assert!(line.starts_with("a1 OK"), "{line}");
    let text = String::from_utf8(file_of(proxy.state_dir.path())).unwrap();
    assert!(
        text.contains("\"sealed\"") && !text.contains(harness::SEED_REFRESH),
        "{text}"
    );
    let sealed = open_sealed(proxy.state_dir.path(), PASSWORD);
    assert_eq!(
        sealed.refresh_token.unwrap().expose_secret(),
        proxy.tokens.state.latest_refresh_token().unwrap(),
        "the rotated refresh token is sealed on disk"
    );

    let token_requests = proxy.tokens.state.total_requests();
    let upstream_auths = server.state.auth_attempts();
    let before = file_of(proxy.state_dir.path());
    for wrong in ["hunter3", "", "HUNTER2", "hunter2 "] {
        let line = imap_login(&proxy, wrong).await;
        assert!(line.starts_with("a1 NO [AUTHENTICATIONFAILED] "), "{line}");
        if !wrong.is_empty() {
            assert!(!line.contains(wrong), "{line}");
        }
    }
    assert_eq!(proxy.tokens.state.total_requests(), token_requests);
    assert_eq!(server.state.auth_attempts(), upstream_auths);
    assert_eq!(file_of(proxy.state_dir.path()), before, "tokens kept");
    let line = imap_login(&proxy, PASSWORD).await;
    assert!(line.starts_with("a1 OK"), "{line}");
}

#[tokio::test]
async fn a_restarted_proxy_opens_the_seal_only_with_the_chosen_password() {
    let (proxy, server) = proxy().await;
    assert!(imap_login(&proxy, PASSWORD).await.starts_with("a1 OK"));
    let Proxy {
        pki,
        tokens,
        state_dir,
        running,
    } = proxy;
    running.shutdown().await;
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    );
    let proxy = Proxy {
        running: start(&text).await,
        pki,
        tokens,
        state_dir,
    };
    let token_requests = proxy.tokens.state.total_requests();
    let before = file_of(proxy.state_dir.path());
    let line = imap_login(&proxy, "not-the-password").await;
    assert!(line.starts_with("a1 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert_eq!(proxy.tokens.state.total_requests(), token_requests);
    assert_eq!(file_of(proxy.state_dir.path()), before);
    assert!(imap_login(&proxy, PASSWORD).await.starts_with("a1 OK"));
}

#[tokio::test]
async fn an_unlocked_account_logs_in_without_a_kdf_run() {
    let (proxy, _server) = proxy().await;
    let ctx = &proxy.running.context;
    for _ in 0..50 {
        ctx.token_for(&creds(PASSWORD)).await.unwrap();
    }
    for _ in 0..50 {
        assert!(matches!(
            ctx.token_for(&creds("wrong")).await,
            Err(Failure::BadCredentials(_))
        ));
    }
    assert_eq!(ctx.gate.tokens().kdf_runs(), 1);
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
}

#[tokio::test]
async fn a_refresh_reseals_the_rotated_token_before_use() {
    let (proxy, _server) = proxy().await;
    assert!(imap_login(&proxy, PASSWORD).await.starts_with("a1 OK"));
    let ctx = &proxy.running.context;
    for _ in 0..3 {
        // A token is never renewed in the first half of its life: drop it
        // so that this login refreshes.
        ctx.gate.tokens().discard_access_token(USER);
        let (_, at) = ctx.token_for(&creds(PASSWORD)).await.unwrap();
        assert!(proxy.tokens.state.is_valid_access_token(at.expose_secret()));
        let sealed = open_sealed(proxy.state_dir.path(), PASSWORD);
        assert_eq!(
            sealed.refresh_token.unwrap().expose_secret(),
            proxy.tokens.state.latest_refresh_token().unwrap(),
            "the rotated refresh token is sealed on disk before the access token is handed out"
        );
    }
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 4);
    assert_eq!(
        ctx.gate.tokens().kdf_runs(),
        1,
        "re-sealing needs no password"
    );
}

#[tokio::test]
async fn forget_then_sign_in_again_with_a_new_password() {
    let (proxy, _server) = proxy().await;
    assert!(imap_login(&proxy, PASSWORD).await.starts_with("a1 OK"));
    assert!(
        TokenStore::new(proxy.state_dir.path())
            .remove(USER)
            .unwrap()
    );
    // At its next refresh the running proxy sees the removal and does not undo it.
    let ctx = &proxy.running.context;
    ctx.gate.tokens().discard_access_token(USER);
    let refreshes = proxy.tokens.state.requests(GRANT_REFRESH);
    match ctx.token_for(&creds(PASSWORD)).await {
        Err(Failure::SignInNeeded(m)) => assert!(m.contains("authorize"), "{m}"),
        other => panic!("a forgotten account needs a new sign-in: {other:?}"),
    }
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), refreshes);
    assert!(
        !TokenStore::new(proxy.state_dir.path())
            .path_for(USER)
            .exists()
    );
    // A new sign-in, sealed under the password chosen with it.
    proxy.tokens.state.seed_refresh_token(harness::SEED_REFRESH);
    harness::seal_tokens(
        proxy.state_dir.path(),
        USER,
        "a new password",
        &xoauth2_proxy::auth::vault::StoredTokens {
            refresh_token: Some(SecretString::from(harness::SEED_REFRESH.to_owned())),
            access_token: None,
            expires_at: None,
        },
    );
    ctx.token_for(&creds("a new password")).await.unwrap();
    assert!(matches!(
        ctx.token_for(&creds(PASSWORD)).await,
        Err(Failure::BadCredentials(_))
    ));
    open_sealed(proxy.state_dir.path(), "a new password");
}

#[tokio::test]
async fn a_damaged_sealed_file_is_reported_not_used() {
    let (proxy, _server) = proxy().await;
    assert!(imap_login(&proxy, PASSWORD).await.starts_with("a1 OK"));
    let path = TokenStore::new(proxy.state_dir.path()).path_for(USER);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ct = v["sealed"]["ciphertext"].as_str().unwrap().to_owned();
    let swapped = if ct.starts_with('A') { "B" } else { "A" };
    v["sealed"]["ciphertext"] = format!("{swapped}{}", &ct[1..]).into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let Proxy {
        pki,
        tokens,
        state_dir,
        running,
    } = proxy;
    running.shutdown().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    );
    let proxy = Proxy {
        running: start(&text).await,
        pki,
        tokens,
        state_dir,
    };
    let requests = proxy.tokens.state.total_requests();
    let line = imap_login(&proxy, PASSWORD).await;
    assert!(line.starts_with("a1 NO [AUTHENTICATIONFAILED] "), "{line}");
    // Why (a damaged file, and where) is in the log, not in the reply.
    assert!(
        line.contains("authorize") && !line.contains(".json"),
        "{line}"
    );
    assert_eq!(proxy.tokens.state.total_requests(), requests);
    assert_eq!(server.state.auth_attempts(), 0);
}

#[tokio::test]
async fn password_hash_accounts_check_the_hash_and_keep_tokens_unsealed() {
    let mut phc_cmd = std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    phc_cmd
        .stdin
        .take()
        .unwrap()
        .write_all(b"scanner-pw\n")
        .unwrap();
    let out = phc_cmd.wait_with_output().unwrap();
    assert!(out.status.success());
    let phc = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(phc.starts_with("$argon2id$"), "{phc}");

    let (proxy, server) = proxy_with_extra(&format!("password_hash = \"{phc}\"\n")).await;
    let line = imap_login(&proxy, "not-it").await;
    assert!(line.starts_with("a1 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert_eq!(proxy.tokens.state.total_requests(), 0);
    assert_eq!(server.state.auth_attempts(), 0);
    assert!(imap_login(&proxy, "scanner-pw").await.starts_with("a1 OK"));
    assert!(imap_login(&proxy, "scanner-pw").await.starts_with("a1 OK"));
    let ctx = &proxy.running.context;
    assert_eq!(
        ctx.gate.tokens().kdf_runs(),
        2,
        "one failed try, then one success: one count for every password check"
    );
    let stored = TokenStore::new(proxy.state_dir.path())
        .load(USER)
        .expect("unsealed")
        .expect("present");
    assert_eq!(
        stored.refresh_token.unwrap().expose_secret(),
        proxy.tokens.state.latest_refresh_token().unwrap()
    );
}

#[tokio::test]
async fn forget_and_hash_password_commands() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nstate_dir = {:?}\n\n[[account]]\nusername = \"{USER}\"\nprovider = \"office365\"\nclient_id = \"x\"\n",
            state.display().to_string()
        ),
    )
    .unwrap();
    TokenStore::new(&state)
        .save(
            USER,
            &xoauth2_proxy::auth::vault::StoredTokens {
                refresh_token: Some(SecretString::from("rt".to_owned())),
                access_token: None,
                expires_at: None,
            },
        )
        .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
            .args(args)
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let out = run(&["forget", &USER.to_uppercase()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("Removed the tokens"));
    assert!(TokenStore::new(&state).load(USER).unwrap().is_none());
    let out = run(&["forget", USER]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("no stored tokens"));
    // An empty password is refused; no configuration is needed to hash one.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("hash-password")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty"));
}

#[tokio::test(start_paused = true)]
async fn repeated_wrong_passwords_from_one_address_are_slowed_then_refused() {
    let (proxy, _server) = proxy().await;
    let ctx = &proxy.running.context;
    let attacker = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    let neighbour = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10));
    ctx.token_for_peer(neighbour, &creds(PASSWORD))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    for i in 0..LOCKOUT_FAILURES {
        let r = ctx
            .token_for_peer(attacker, &creds(&format!("guess-{i}")))
            .await;
        assert!(matches!(r, Err(Failure::BadCredentials(_))), "{r:?}");
    }
    // 0 + 0 + 1 + 2 + 4 + 8 + 16 + 16 + 16 + 16 seconds of delays.
    assert!(
        started.elapsed() >= Duration::from_secs(79),
        "{:?}",
        started.elapsed()
    );
    // Refused now, even with the right password, without checking it.
    let r = ctx.token_for_peer(attacker, &creds(PASSWORD)).await;
    assert!(
        matches!(&r, Err(Failure::Unavailable(m)) if m.contains("too many failed logins")),
        "{r:?}"
    );
    // Other addresses are not affected.
    ctx.token_for_peer(neighbour, &creds(PASSWORD))
        .await
        .unwrap();
    tokio::time::advance(LOCKOUT).await;
    ctx.token_for_peer(attacker, &creds(PASSWORD))
        .await
        .unwrap();
    assert_eq!(proxy.tokens.state.requests(GRANT_REFRESH), 1);
}

fn creds_for(user: &str, password: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: SecretString::from(password.to_owned()),
    }
}

#[tokio::test]
async fn a_catch_all_account_gives_each_address_its_own_tokens_and_password() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    )
    .replace(
        &format!("username = \"{USER}\""),
        "username = \"@Example.TEST\"",
    );
    let proxy = Proxy {
        pki,
        tokens,
        state_dir,
        running: start(&text).await,
    };
    // The signed-in address works end to end, in any case.
    let line = imap_login(&proxy, PASSWORD).await;
    assert!(line.starts_with("a1 OK"), "{line}");
    open_sealed(proxy.state_dir.path(), PASSWORD);

    let ctx = &proxy.running.context;
    let other = "Other@example.test";
    // Another address of the domain is an account of its own: not signed in yet.
    match ctx.token_for(&creds_for(other, PASSWORD)).await {
        Err(Failure::SignInNeeded(m)) => assert!(
            m.contains("other@example.test") && m.contains("authorize"),
            "{m}"
        ),
        r => panic!("an address without a sign-in: {r:?}"),
    }
    // Addresses outside the domain are not covered.
    for stranger in [
        "user@example.testx",
        "user@sub.example.test",
        "@example.test",
        "example.test",
    ] {
        assert!(
            matches!(
                ctx.token_for(&creds_for(stranger, PASSWORD)).await,
                Err(Failure::BadCredentials(_))
            ),
            "{stranger}"
        );
    }
    // Its own sign-in with its own password.
    let store = TokenStore::new(proxy.state_dir.path());
    proxy.tokens.state.seed_refresh_token("rt-other");
    harness::seal_tokens(
        proxy.state_dir.path(),
        "other@example.test",
        "other-password",
        &xoauth2_proxy::auth::vault::StoredTokens {
            refresh_token: Some(SecretString::from("rt-other".to_owned())),
            access_token: None,
            expires_at: None,
        },
    );
    let (user, _token) = ctx
        .token_for(&creds_for(other, "other-password"))
        .await
        .unwrap();
    assert_eq!(user, "other@example.test");
    assert!(matches!(
        ctx.token_for(&creds_for(other, PASSWORD)).await,
        Err(Failure::BadCredentials(_))
    ));
    assert!(matches!(
        ctx.token_for(&creds_for(USER, "other-password")).await,
        Err(Failure::BadCredentials(_))
    ));
    assert!(
        store.path_for(USER) != store.path_for(other) && store.path_for(other).exists(),
        "one entry per address"
    );
    match store.load_entry(other).unwrap().unwrap() {
        Entry::Sealed(s) => {
            let key = SealKey::derive(b"other-password", s.params(), s.salt()).unwrap();
            s.open(&key).expect("sealed with its own password");
        }
        Entry::Unsealed(_) => panic!("not sealed"),
    }
    // The page's view: the catch-all row and each address in use.
    let rows = ctx.gate.tokens().status().await;
    let names: Vec<&str> = rows.iter().map(|r| r.username.as_str()).collect();
    assert_eq!(
        names,
        ["@Example.TEST", "other@example.test", "user@example.test"]
    );
}

#[tokio::test]
async fn an_app_only_account_logs_in_with_its_hash_and_a_client_credentials_token() {
    let phc = xoauth2_proxy::auth::password::hash_password(b"relay-pw").unwrap();
    let (proxy, server) = proxy_with_extra(&format!(
        "password_hash = \"{phc}\"\nflow = \"client_credentials\"\nclient_secret = \"app-s3cret\"\n"
    ))
    .await;
    // Not the seeded sign-in: app-only access needs none, and stores nothing.
    let store = TokenStore::new(proxy.state_dir.path());
    store.remove(USER).unwrap();
    proxy
        .tokens
        .state
        .set_expected_client_secret(Some("app-s3cret"));
    let line = imap_login(&proxy, "wrong").await;
    assert!(line.starts_with("a1 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert_eq!(proxy.tokens.state.total_requests(), 0);
    for _ in 0..3 {
        let line = imap_login(&proxy, "relay-pw").await;
        assert!(line.starts_with("a1 OK"), "{line}");
    }
    assert_eq!(
        proxy
            .tokens
            .state
            .requests(support::token_server::GRANT_CLIENT_CREDENTIALS),
        1,
        "the app-only token is cached"
    );
    assert_eq!(server.state.auth_attempts(), 3);
    assert!(
        !store.path_for(USER).exists(),
        "app-only tokens stay in memory"
    );
    let rows = proxy.running.context.gate.tokens().status().await;
    assert!(
        matches!(
            rows[0].state,
            xoauth2_proxy::auth::tokens::AccountState::AppOnly {
                expires_in: Some(_)
            }
        ),
        "{rows:?}"
    );

    // A rejected credential is the admin's to fix, not a sign-in.
    proxy
        .tokens
        .state
        .set_expected_client_secret(Some("rotated"));
    proxy.tokens.state.expire_access_tokens();
    proxy
        .running
        .context
        .gate
        .tokens()
        .age_access_token(USER, Duration::from_secs(24 * 3600));
    let line = imap_login(&proxy, "relay-pw").await;
    assert!(line.starts_with("a1 NO [UNAVAILABLE] "), "{line}");
    assert!(!line.contains("app-s3cret"), "{line}");
}

#[tokio::test]
async fn stale_temp_files_of_a_killed_write_are_removed_at_start() {
    use xoauth2_proxy::auth::vault::STALE_TEMP_AGE;
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let dir = TokenStore::new(state_dir.path()).dir().to_owned();
    // What a write killed before its rename leaves, a while ago...
    let stale = dir.join(format!("{USER}.tmp.999.0"));
    std::fs::write(&stale, b"{\"half").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - STALE_TEMP_AGE - Duration::from_secs(1))
        .unwrap();
    // ...and a write another process may be doing right now.
    let in_progress = dir.join(format!("{USER}.tmp.998.0"));
    std::fs::write(&in_progress, b"{").unwrap();
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    );
    let running = start(&text).await;
    assert!(!stale.exists(), "the leftover is gone");
    assert!(in_progress.exists(), "a recent temp file is left alone");
    assert!(
        TokenStore::new(state_dir.path())
            .load_entry(USER)
            .unwrap()
            .is_some()
    );
    running.shutdown().await;
}

/// The race the sign-in closes: `authorize --device --password-stdin`
/// seals the tokens under the password given there, on their first write
/// (no refresh token in clear in the file at any point it exists); a local
/// client that logs in first with another password is refused as a wrong
/// password, and the real password works.
#[tokio::test]
async fn authorize_password_stdin_seals_before_any_client_logs_in() {
    const CHOSEN: &str = "the owner's password";
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    tokens.state.set_pending_polls(0);
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    );
    let config = state_dir.path().join("proxy.toml");
    std::fs::write(&config, &text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(&config)
        .args(["authorize", USER, "--device", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        writeln!(child.stdin.take().unwrap(), "{CHOSEN}").unwrap();
    }
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let file = file_of(state_dir.path());
    let text_on_disk = String::from_utf8(file).unwrap();
    let issued = tokens.state.latest_refresh_token().unwrap();
    assert!(
        text_on_disk.contains("\"sealed\"") && !text_on_disk.contains(&issued),
        "{text_on_disk}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains(CHOSEN));
    assert!(!String::from_utf8_lossy(&out.stderr).contains(CHOSEN));

    let proxy = Proxy {
        running: start(&text).await,
        pki,
        tokens,
        state_dir,
    };
    let before = file_of(proxy.state_dir.path());
    let line = imap_login(&proxy, "first come first served").await;
    assert!(line.starts_with("a1 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert_eq!(file_of(proxy.state_dir.path()), before, "nothing rebound");
    assert_eq!(server.state.auth_attempts(), 0, "refused locally");
    let line = imap_login(&proxy, CHOSEN).await;
    assert!(line.starts_with("a1 OK"), "{line}");
    // And the first client's password stays wrong after the owner's login.
    let line = imap_login(&proxy, "first come first served").await;
    assert!(line.starts_with("a1 NO"), "{line}");
}

/// Tokens left unsealed for a sealed account (by an older `authorize`) are
/// not bound by whichever client logs in first: every login is told to
/// sign in again, and the file is left alone.
#[tokio::test]
async fn unsealed_tokens_of_a_sealed_account_are_not_bound_by_a_login() {
    let (proxy, server) = proxy().await;
    let store = TokenStore::new(proxy.state_dir.path());
    store
        .save(
            USER,
            &xoauth2_proxy::auth::vault::StoredTokens {
                refresh_token: Some(SecretString::from(harness::SEED_REFRESH.to_owned())),
                access_token: None,
                expires_at: None,
            },
        )
        .unwrap();
    let before = file_of(proxy.state_dir.path());
    let line = imap_login(&proxy, "whoever comes first").await;
    assert!(line.starts_with("a1 NO [AUTHENTICATIONFAILED] "), "{line}");
    assert!(line.contains("must sign in (again)"), "{line}");
    assert_eq!(file_of(proxy.state_dir.path()), before);
    assert_eq!(server.state.auth_attempts(), 0);
}
