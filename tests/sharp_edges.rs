//! The "shared machine" review's leaks and sharp edges, each replayed:
//! a client reply that carried a token file's path; two catch-all addresses
//! that shared one token file; a `password_hash` whose Argon2 costs would
//! take minutes and gigabytes; a token endpoint over plain http to another
//! host; a forged sign-in answer that aborted `authorize --browser`; and a
//! sign-in page port held by someone else.

mod harness;
mod support;

use std::collections::HashMap;
use std::io::{BufRead as _, Read as _};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{GateLogin, PASSWORD, config_text, imap, seed_tokens, start};
use secrecy::{ExposeSecret as _, SecretString};
use support::*;
use xoauth2_proxy::auth::vault::{StoredTokens, TokenStore};
use xoauth2_proxy::config::Config;
use xoauth2_proxy::doctor::{Finding, check};
use xoauth2_proxy::protocol::Failure;
use xoauth2_proxy::sasl::Credentials;

fn creds(user: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: SecretString::from(PASSWORD.to_owned()),
    }
}

/// An IMAP LOGIN through the proxy's first listener: the tagged reply.
async fn imap_login(addr: SocketAddr, user: &str) -> String {
    let mut c = TestClient::connect(addr).await;
    c.expect_prefix(b"* OK").await;
    c.send(format!("a1 LOGIN {user} {PASSWORD}\r\n").as_bytes())
        .await;
    let lines = c.read_until_tagged("a1").await;
    String::from_utf8_lossy(lines.last().unwrap()).into_owned()
}

/// What a client must never read: where the state lives, file names, the
/// token endpoint's address.
fn assert_nothing_internal(reply: &str, state_dir: &Path, token_base: &str) {
    for leak in [
        state_dir.display().to_string(),
        "tokens/".to_owned(),
        ".json".to_owned(),
        "os error".to_owned(),
        token_base.to_owned(),
        token_base.trim_start_matches("http://").to_owned(),
    ] {
        assert!(
            !reply.contains(&leak),
            "`{leak}` reached the client: {reply}"
        );
    }
}

#[tokio::test]
async fn client_replies_carry_no_paths_io_errors_or_endpoint_details() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = tempfile::tempdir().unwrap();
    seed_tokens(state_dir.path(), &tokens);
    let running = start(&config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    ))
    .await;
    // A damaged token file: the store's error names its path.
    let path = TokenStore::new(state_dir.path()).path_for(USER);
    std::fs::write(&path, b"{not a token file").unwrap();
    let reply = imap_login(running.addrs[0], USER).await;
    assert!(
        reply.starts_with("a1 NO [AUTHENTICATIONFAILED] "),
        "{reply}"
    );
    assert!(
        reply.contains(&format!("xoauth2-proxy authorize {USER}")),
        "{reply}"
    );
    assert_nothing_internal(&reply, state_dir.path(), &tokens.url());
    // An unknown account reads like a wrong password.
    let unknown = imap_login(running.addrs[0], "nobody@example.test").await;
    assert_eq!(
        unknown,
        "a1 NO [AUTHENTICATIONFAILED] Wrong user name or password for nobody@example.test\r\n"
    );
    running.shutdown().await;

    // A token endpoint that is down: the transport error names its address.
    seed_tokens(state_dir.path(), &tokens);
    let dead = format!("http://{}", harness::dead_addr().await);
    let running = start(&config_text(
        &pki,
        state_dir.path(),
        &dead,
        &[imap(server.addr)],
        "",
    ))
    .await;
    let reply = imap_login(running.addrs[0], USER).await;
    assert!(reply.starts_with("a1 NO [UNAVAILABLE] "), "{reply}");
    assert_nothing_internal(&reply, state_dir.path(), &dead);
    // The same through the gate, as every protocol words it.
    match running.context.token_for(&creds(USER)).await {
        Err(Failure::Unavailable(m)) => assert_nothing_internal(&m, state_dir.path(), &dead),
        other => panic!("a dead token endpoint: {other:?}"),
    }
    running.shutdown().await;

    // An upstream that is down: the connect error names it.
    let dead_upstream = harness::dead_addr().await;
    seed_tokens(state_dir.path(), &tokens);
    let running = start(&config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(dead_upstream)],
        "",
    ))
    .await;
    let reply = imap_login(running.addrs[0], USER).await;
    assert!(
        reply.starts_with("a1 NO [UNAVAILABLE] cannot reach "),
        "{reply}"
    );
    assert!(!reply.contains(&dead_upstream.to_string()), "{reply}");
    assert!(!reply.contains("refused"), "{reply}");
    running.shutdown().await;
}

/// Under the old naming both of these were `a_b@catch.test.json`.
const COLLIDING: [&str; 2] = ["a_b@catch.test", "a!b@catch.test"];

fn tokens_with(refresh: &str) -> StoredTokens {
    StoredTokens {
        refresh_token: Some(SecretString::from(refresh.to_owned())),
        access_token: None,
        expires_at: None,
    }
}

fn refresh_of(store: &TokenStore, account: &str) -> Option<String> {
    store
        .load(account)
        .expect("a readable entry")
        .and_then(|t| t.refresh_token)
        .map(|t| t.expose_secret().to_owned())
}

#[test]
fn addresses_that_shared_a_file_get_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    let [a, b] = COLLIDING;
    assert_ne!(store.path_for(a), store.path_for(b));
    store.save(a, &tokens_with("rt-a")).unwrap();
    store.save(b, &tokens_with("rt-b")).unwrap();
    assert_eq!(refresh_of(&store, a).as_deref(), Some("rt-a"));
    assert_eq!(refresh_of(&store, b).as_deref(), Some("rt-b"));
    // Case is folded as everywhere else; other characters are not.
    assert_eq!(store.path_for("A_B@Catch.TEST"), store.path_for(a));
    for other in [
        "a.b@catch.test",
        "a-b@catch.test",
        "a+b@catch.test",
        "a%b@catch.test",
    ] {
        assert_ne!(store.path_for(other), store.path_for(a), "{other}");
        assert_ne!(store.path_for(other), store.path_for(b), "{other}");
    }
    // An absurdly long address still gets a short name of its own.
    let long_a = format!("{}@catch.test", "é".repeat(200));
    let long_b = format!("{}è@catch.test", "é".repeat(199));
    let name = |p: std::path::PathBuf| p.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name(store.path_for(&long_a)).len() < 255);
    assert_ne!(store.path_for(&long_a), store.path_for(&long_b));
    store.save(&long_a, &tokens_with("rt-long")).unwrap();
    assert_eq!(refresh_of(&store, &long_a).as_deref(), Some("rt-long"));
    assert_eq!(refresh_of(&store, &long_b), None);
}

#[test]
fn a_file_of_the_old_naming_is_found_by_its_owner_only_and_moved() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    let [a, b] = COLLIDING;
    // What an older build left: one file for both, written last by `b`.
    std::fs::create_dir_all(store.dir()).unwrap();
    let legacy = store.dir().join("a_b@catch.test.json");
    std::fs::write(
        &legacy,
        format!(r#"{{"version":1,"account":"{b}","refresh_token":"rt-old"}}"#),
    )
    .unwrap();
    assert_eq!(refresh_of(&store, b).as_deref(), Some("rt-old"));
    assert_eq!(
        refresh_of(&store, a),
        None,
        "the other address reads nothing"
    );
    // The owner's next write moves it to its own name.
    store.save(b, &tokens_with("rt-new")).unwrap();
    assert!(!legacy.exists());
    assert!(store.path_for(b).exists());
    assert_eq!(refresh_of(&store, b).as_deref(), Some("rt-new"));
    // `forget` removes an old-style file too.
    std::fs::write(
        &legacy,
        format!(r#"{{"version":1,"account":"{a}","refresh_token":"rt-a"}}"#),
    )
    .unwrap();
    assert_eq!(refresh_of(&store, a).as_deref(), Some("rt-a"));
    assert!(store.remove(a).unwrap());
    assert!(!legacy.exists());
    assert_eq!(refresh_of(&store, a), None);
}

#[tokio::test]
async fn two_catch_all_addresses_that_collided_log_in_with_their_own_tokens() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let [a, b] = COLLIDING;
    let opts = ImapOpts {
        user: a.to_owned(),
        ..ImapOpts::default()
    };
    let server = FakeImapServer::start(&pki, tokens.state.clone(), opts).await;
    let state_dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    )
    .replace(
        &format!("username = \"{USER}\""),
        "username = \"@catch.test\"",
    );
    let store = TokenStore::new(state_dir.path());
    for (account, refresh) in [(a, "rt-a"), (b, "rt-b")] {
        tokens.state.seed_refresh_token(refresh);
        harness::seal_tokens(state_dir.path(), account, PASSWORD, &tokens_with(refresh));
    }
    let running = start(&text).await;
    // One end to end (the fake mail server knows one user), the other
    // through the gate: each refreshes with its own refresh token.
    let reply = imap_login(running.addrs[0], a).await;
    assert!(reply.starts_with("a1 OK"), "{a}: {reply}");
    running
        .context
        .token_for(&creds(b))
        .await
        .expect("b's token");
    assert_eq!(tokens.state.requests("refresh_token"), 2);
    // Each address bound its own password to its own file.
    for account in COLLIDING {
        assert!(matches!(
            store.load_entry(account),
            Ok(Some(xoauth2_proxy::auth::vault::Entry::Sealed(_)))
        ));
        let wrong = Credentials {
            username: account.into(),
            password: SecretString::from("not it".to_owned()),
        };
        assert!(matches!(
            running.context.token_for(&wrong).await,
            Err(Failure::BadCredentials(_))
        ));
    }
    running.shutdown().await;
}

fn write_config(dir: &Path, text: &str) -> std::path::PathBuf {
    let file = dir.join("proxy.toml");
    std::fs::write(&file, text).unwrap();
    file
}

/// `xoauth2-proxy --config FILE check-config`: success and the output.
fn check_config(file: &Path) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(file)
        .arg("check-config")
        .output()
        .expect("run check-config");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

const APP_ONLY: &str = "[[account]]\nusername = \"scanner@example.test\"\nprovider = \"custom\"\n\
    client_id = \"cid\"\nclient_secret = \"s\"\nflow = \"client_credentials\"\nscopes = [\"x\"]\n";

#[test]
fn a_password_hash_with_hostile_costs_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let phc = xoauth2_proxy::auth::password::hash_password(b"scanner").unwrap();
    let good = format!(
        "{APP_ONLY}token_url = \"https://login.example.test/token\"\npassword_hash = \"{phc}\"\n"
    );
    let (ok, out) = check_config(&write_config(dir.path(), &good));
    assert!(ok, "{out}");
    for (costs, named) in [
        ("m=4194304,t=2,p=1", "memory"),
        ("m=19456,t=100000,p=1", "passes"),
        ("m=19456,t=2,p=64", "lanes"),
    ] {
        let hostile = good.replace("m=19456,t=2,p=1", costs);
        let started = Instant::now();
        let (ok, out) = check_config(&write_config(dir.path(), &hostile));
        assert!(!ok, "{costs} accepted: {out}");
        assert!(
            out.contains("account[0].password_hash")
                && out.contains(named)
                && out.contains("limit"),
            "{out}"
        );
        assert!(started.elapsed() < Duration::from_secs(20));
    }
}

#[test]
fn endpoints_over_plain_http_are_refused_off_this_machine() {
    let dir = tempfile::tempdir().unwrap();
    for (key, url) in [
        ("token_url", "http://login.example.test/token"),
        ("token_url", "http://192.168.1.10:8080/token"),
        ("authorize_url", "http://login.example.test/authorize"),
        ("device_code_url", "http://[2001:db8::1]/devicecode"),
    ] {
        let mut text = "[[account]]\nusername = \"u@example.test\"\nprovider = \"custom\"\n\
            client_id = \"cid\"\nscopes = [\"x\"]\n"
            .to_owned();
        if key != "token_url" {
            text.push_str("token_url = \"https://login.example.test/token\"\n");
        }
        text.push_str(&format!("{key} = \"{url}\"\n"));
        let (ok, out) = check_config(&write_config(dir.path(), &text));
        assert!(!ok, "{url} accepted: {out}");
        assert!(
            out.contains(&format!("account[0].{key}")) && out.contains("https"),
            "{out}"
        );
    }
    for url in [
        "https://login.example.test/token",
        "http://127.0.0.1:8080/token",
        "http://127.5.6.7/token",
        "http://localhost:8080/token",
        "http://[::1]:8080/token",
    ] {
        let text = format!(
            "[[account]]\nusername = \"u@example.test\"\nprovider = \"custom\"\n\
            client_id = \"cid\"\nscopes = [\"x\"]\ntoken_url = \"{url}\"\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap_or_else(|e| panic!("{url}: {e}"));
    }
}

/// Runs `authorize --browser` for an account whose endpoints are the fake's;
/// its stdout lines come through the channel.
fn spawn_authorize(
    dir: &Path,
    fake: &FakeTokenServer,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let file = write_config(
        dir,
        &format!(
            "[proxy]\nstate_dir = \"{}\"\n\n[[account]]\nusername = \"{USER}\"\n\
             provider = \"office365\"\nclient_id = \"cid\"\nflow = \"authorization_code\"\n\
             authorize_url = \"{}\"\ntoken_url = \"{}\"\n",
            dir.join("state").display(),
            fake.authorize_url(),
            fake.token_url()
        ),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(&file)
        .args([
            "authorize",
            USER,
            "--browser",
            "--no-open",
            "--password-stdin",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run authorize");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{FORGED_TEST_PASSWORD}").expect("the password on standard input");
    }
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The local password `spawn_authorize` chooses (at least 8 characters; the
/// harness's `PASSWORD` is shorter: it is sealed directly, not signed in).
const FORGED_TEST_PASSWORD: &str = "forged answers test";

#[tokio::test]
async fn a_forged_answer_does_not_abort_authorize_browser() {
    let fake = FakeTokenServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, lines) = spawn_authorize(dir.path(), &fake);
    let url = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("authorize printed the URL");
        if line.starts_with(&fake.authorize_url()) {
            break line;
        }
    };
    // The browser at the provider: the redirect back, with code and state.
    let resp = browser().get(&url).send().await.unwrap();
    let location = resp.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .replacen("http://localhost:", "http://127.0.0.1:", 1);
    let real = reqwest::Url::parse(&location).unwrap();
    let params: HashMap<String, String> = real.query_pairs().into_owned().collect();
    let base = format!("{}://{}{}", real.scheme(), real.authority(), real.path());
    // Another local program answers first: wrong state, no state, a denial.
    for forged in [
        format!("{base}?code=stolen&state=forged"),
        format!("{base}?code=stolen"),
        format!("{base}?error=access_denied&state=forged"),
    ] {
        let page = browser().get(&forged).send().await.unwrap();
        assert_eq!(page.status(), reqwest::StatusCode::BAD_REQUEST, "{forged}");
        let body = page.text().await.unwrap();
        assert!(body.contains("ignored"), "{body}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "authorize gave up after {forged}"
        );
    }
    assert_eq!(fake.state.codes_redeemed(), 0);
    // The real answer still completes the sign-in.
    assert!(params.contains_key("code") && params.contains_key("state"));
    let page = browser().get(&location).send().await.unwrap();
    assert!(page.text().await.unwrap().contains("Signed in"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "authorize did not exit"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{stderr}");
    assert_eq!(fake.state.codes_redeemed(), 1);
    let stored = open_stored(&dir.path().join("state"), USER, FORGED_TEST_PASSWORD);
    assert!(stored.is_some_and(|t| t.refresh_token.is_some()));
}

fn page_findings(findings: &[Finding]) -> Vec<Finding> {
    findings
        .iter()
        .filter(|f| match f {
            Finding::Ok(m) | Finding::Problem(m) => {
                m.contains("sign-in page") || m.contains("SIGN-IN PAGE")
            }
        })
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_squatted_page_port_is_said_loudly_at_start_and_by_doctor() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    seed_tokens(dir.path(), &tokens);
    // Someone else listens on the page's port first.
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let text = config_text(
        &pki,
        dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        &format!("admin_listen = \"127.0.0.1:{port}\"\n"),
    );
    let config = Config::parse(&text, Path::new("t.toml")).unwrap();
    let findings = page_findings(&check(&config, |_| {}).await);
    match findings.as_slice() {
        [Finding::Problem(m)] => assert!(
            m.contains("TAKEN")
                && m.contains("possibly another user")
                && m.contains("NOT this proxy's page"),
            "{m}"
        ),
        other => panic!("doctor on a squatted port: {other:?}"),
    }

    // The proxy itself, at start: a loud line, and the mail listener runs on.
    let file = write_config(dir.path(), &text);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(&file)
        .arg("run")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the proxy");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let warned = loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("PORT IS TAKEN") => break line,
            Ok(_) => continue,
            Err(e) => {
                let _ = child.kill();
                panic!("no warning about the taken port: {e}");
            }
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        warned.contains("ERROR")
            && warned.contains("possibly another user")
            && warned.contains(&format!(
                "http://localhost:{port}/ is NOT this proxy's page"
            )),
        "{warned}"
    );
    drop(squatter);

    // A free port, then the proxy's own page on it: no problem either way.
    let findings = page_findings(&check(&config, |_| {}).await);
    assert!(
        matches!(findings.as_slice(), [Finding::Ok(m)] if m.contains("free")),
        "{findings:?}"
    );
    let running = start(&text).await;
    assert_eq!(running.admin_addr.map(|a| a.port()), Some(port));
    let findings = page_findings(&check(&config, |_| {}).await);
    assert!(
        matches!(findings.as_slice(), [Finding::Ok(m)] if m.contains("answers like this proxy's page")),
        "{findings:?}"
    );
    running.shutdown().await;
}
