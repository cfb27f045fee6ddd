//! The sign-in flows against the fake identity platform over 127.0.0.1:
//! authorization code with PKCE (library and `authorize --browser`), client
//! credentials with a secret or a certificate, and the provider presets.

mod support;

use std::collections::HashMap;
use std::io::BufRead as _;
use std::path::Path;
use std::time::Duration;

use oauth2::TokenResponse as _;
use secrecy::ExposeSecret as _;
use support::token_server::{GRANT_AUTHORIZATION_CODE, GRANT_CLIENT_CREDENTIALS};
use support::*;
use xoauth2_proxy::auth::flows::{self, FlowError, PendingSignIn, callback_error, finish_sign_in};
use xoauth2_proxy::auth::http::HttpClient;
use xoauth2_proxy::auth::identity::IdentityError;
use xoauth2_proxy::auth::provider;
use xoauth2_proxy::auth::vault::TokenStore;
use xoauth2_proxy::config::{AccountConfig, Cloud, Config};

const CERT: &str = include_str!("fixtures/client_cert.pem");
/// The local password `authorize` is given (`--password-stdin`).
const SIGN_IN_PASSWORD: &str = "correct horse 1";

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An office365 account whose endpoints are the fake's.
fn account(fake: &FakeTokenServer, flow: &str, extra: &str) -> AccountConfig {
    toml::from_str(&format!(
        "username = \"{USER}\"\nprovider = \"office365\"\nclient_id = \"cid\"\n\
         flow = \"{flow}\"\nauthorize_url = \"{}\"\ntoken_url = \"{}\"\n{extra}",
        fake.authorize_url(),
        fake.token_url()
    ))
    .expect("an account")
}

fn http() -> HttpClient {
    let config = Config::parse("", Path::new("empty.toml")).expect("an empty config");
    xoauth2_proxy::http_client(&config).expect("an HTTP client")
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Plays the browser at the fake's authorize page: the query of the redirect it answers with.
async fn visit(url: &str) -> (String, HashMap<String, String>) {
    let resp = browser().get(url).send().await.expect("the authorize page");
    assert_eq!(resp.status(), reqwest::StatusCode::FOUND);
    let location = resp.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    let params = reqwest::Url::parse(&location)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    (location, params)
}

const REDIRECT: &str = "http://localhost:8400/callback";

#[tokio::test]
async fn authorization_code_with_pkce_signs_in() {
    let fake = FakeTokenServer::start().await;
    let a = account(&fake, "authorization_code", "");
    let (url, pending) = PendingSignIn::start(&a, REDIRECT).unwrap();
    assert_eq!(pending.username(), USER);
    let (location, params) = visit(&url).await;
    assert!(location.starts_with(REDIRECT), "{location}");
    assert_eq!(params["state"], pending.state());
    assert!(callback_error(&params).is_none());
    let seen = &fake.state.authorize_log()[0];
    assert_eq!(seen.code_challenge_method.as_deref(), Some("S256"));
    assert_eq!(seen.code_challenge.as_ref().map(String::len), Some(43));
    assert_eq!(seen.redirect_uri.as_deref(), Some(REDIRECT));
    assert_eq!(seen.login_hint.as_deref(), Some(USER));
    assert_eq!(seen.prompt.as_deref(), Some("select_account"));
    assert_eq!(seen.query["response_type"], "code");
    assert!(seen.scope.as_ref().unwrap().contains("offline_access"));

    let state = params["state"].clone();
    let tokens = finish_sign_in(pending, &a, &http(), &state, &params["code"])
        .await
        .expect("signed in");
    let refresh = tokens.refresh_token.expect("a refresh token");
    assert!(fake.state.is_valid_refresh_token(refresh.expose_secret()));
    assert!(
        fake.state
            .is_valid_access_token(tokens.access_token.unwrap().expose_secret())
    );
    assert_eq!(fake.state.codes_redeemed(), 1);
    let form = fake.state.last_form().unwrap();
    assert_eq!(form["grant_type"], "authorization_code");
    assert_eq!(form["redirect_uri"], REDIRECT);
    assert_eq!(form["client_id"], "cid");
    assert!(!form.contains_key("client_secret"));
}

#[tokio::test]
async fn a_wrong_state_is_refused_before_any_exchange() {
    let fake = FakeTokenServer::start().await;
    let a = account(&fake, "authorization_code", "");
    let (url, pending) = PendingSignIn::start(&a, REDIRECT).unwrap();
    let (_, params) = visit(&url).await;
    let wrong = format!("{}x", params["state"]);
    let err = finish_sign_in(pending, &a, &http(), &wrong, &params["code"])
        .await
        .unwrap_err();
    assert!(matches!(err, FlowError::StateMismatch), "{err:?}");
    assert_eq!(fake.state.requests(GRANT_AUTHORIZATION_CODE), 0);
}

#[tokio::test]
async fn a_wrong_verifier_is_refused() {
    let fake = FakeTokenServer::start().await;
    let a = account(&fake, "authorization_code", "");
    let (url, _first) = PendingSignIn::start(&a, REDIRECT).unwrap();
    let (_, params) = visit(&url).await;
    // Another sign-in's verifier for this code (its own state, so the state check passes).
    let (_, other) = PendingSignIn::start(&a, REDIRECT).unwrap();
    let state = other.state().to_owned();
    let err = finish_sign_in(other, &a, &http(), &state, &params["code"])
        .await
        .unwrap_err();
    match &err {
        FlowError::Token(m) => assert!(m.contains("invalid_grant"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.state.requests(GRANT_AUTHORIZATION_CODE), 1);
    assert_eq!(fake.state.codes_redeemed(), 0);
    // The message carries no code or verifier.
    assert!(!err.to_string().contains(&params["code"]));
}

#[tokio::test]
async fn access_denied_is_surfaced() {
    let fake = FakeTokenServer::start().await;
    fake.state.set_authorize_error(Some((
        "access_denied",
        "AADSTS65004: User declined to consent to access the app.",
    )));
    let a = account(&fake, "authorization_code", "");
    let (url, pending) = PendingSignIn::start(&a, REDIRECT).unwrap();
    let (_, params) = visit(&url).await;
    assert!(!params.contains_key("code"));
    assert_eq!(params["state"], pending.state());
    match callback_error(&params) {
        Some(FlowError::Denied { error, description }) => {
            assert_eq!(error, "access_denied");
            assert!(description.unwrap().contains("declined"));
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_certificate_client_signs_the_code_exchange() {
    let fake = FakeTokenServer::start().await;
    fake.state.register_client_certificate(CERT);
    let a = account(
        &fake,
        "authorization_code",
        &format!(
            "client_certificate = \"{}\"\nclient_key = \"{}\"",
            fixture("client_cert.pem"),
            fixture("client_key.pem")
        ),
    );
    let (url, pending) = PendingSignIn::start(&a, REDIRECT).unwrap();
    let (_, params) = visit(&url).await;
    let state = params["state"].clone();
    finish_sign_in(pending, &a, &http(), &state, &params["code"])
        .await
        .expect("signed in");
    let form = fake.state.last_form().unwrap();
    assert_eq!(
        form["client_assertion_type"],
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    );
    assert!(fake.state.client_auth_failures().is_empty());
}

#[tokio::test]
async fn client_credentials_with_a_secret() {
    let fake = FakeTokenServer::start().await;
    fake.state.set_expected_client_secret(Some("s3cr3t"));
    let a = account(&fake, "client_credentials", "client_secret = \"s3cr3t\"");
    let response = flows::client_credentials(&a, &http())
        .await
        .expect("a token");
    assert!(
        fake.state
            .is_valid_access_token(response.access_token().secret())
    );
    assert!(response.refresh_token().is_none());
    assert_eq!(fake.state.secret_grants(), 1);
    let form = fake.state.last_form().unwrap();
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(form["scope"], "https://outlook.office365.com/.default");
    assert_eq!(form["client_secret"], "s3cr3t");

    let wrong = account(&fake, "client_credentials", "client_secret = \"nope\"");
    match flows::client_credentials(&wrong, &http()).await {
        Err(oauth2::RequestTokenError::ServerResponse(r)) => {
            assert_eq!(r.error().as_ref(), "invalid_client")
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    assert_eq!(fake.state.requests(GRANT_CLIENT_CREDENTIALS), 2);
}

#[tokio::test]
async fn client_credentials_with_a_certificate() {
    let fake = FakeTokenServer::start().await;
    fake.state.register_client_certificate(CERT);
    for key in ["client_key.pem", "client_key_rsa.pem"] {
        let a = account(
            &fake,
            "client_credentials",
            &format!(
                "client_certificate = \"{}\"\nclient_key = \"{}\"",
                fixture("client_cert.pem"),
                fixture(key)
            ),
        );
        let response = flows::client_credentials(&a, &http())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{key}: {} / {:?}",
                    flows::describe(e),
                    fake.state.client_auth_failures()
                )
            });
        assert!(
            fake.state
                .is_valid_access_token(response.access_token().secret())
        );
        let form = fake.state.last_form().unwrap();
        assert!(!form.contains_key("client_secret"));
        assert!(form.contains_key("client_assertion"));
    }
    assert_eq!(fake.state.assertion_grants(), 2);
}

#[tokio::test]
async fn a_bad_assertion_is_refused() {
    let fake = FakeTokenServer::start().await;
    // Signed with a key that is not the certificate's.
    fake.state.register_client_certificate(CERT);
    let a = account(
        &fake,
        "client_credentials",
        &format!(
            "client_certificate = \"{}\"\nclient_key = \"{}\"",
            fixture("client_cert.pem"),
            fixture("other_key.pem")
        ),
    );
    let expect_invalid_client = |r: Result<oauth2::basic::BasicTokenResponse, _>| match r {
        Err(oauth2::RequestTokenError::ServerResponse(r)) => {
            let r: oauth2::basic::BasicErrorResponse = r;
            assert_eq!(r.error().as_ref(), "invalid_client");
        }
        other => panic!("{:?}", other.map(|_| ())),
    };
    expect_invalid_client(flows::client_credentials(&a, &http()).await);
    assert!(
        fake.state.client_auth_failures()[0].contains("signature"),
        "{:?}",
        fake.state.client_auth_failures()
    );
    // A certificate the app never registered.
    let unregistered = FakeTokenServer::start().await;
    let mut b = a.clone();
    b.client_key = Some(fixture("client_key.pem").into());
    b.token_url = Some(unregistered.token_url());
    expect_invalid_client(flows::client_credentials(&b, &http()).await);
    assert!(unregistered.state.client_auth_failures()[0].contains("x5t#S256"));
    // An audience that is not this endpoint (the assertion names the configured token URL).
    let mut c = b.clone();
    fake.state.register_client_certificate(CERT);
    c.token_url = Some(format!("{}/tenant/oauth2/v2.0/token", fake.url()));
    flows::client_credentials(&c, &http())
        .await
        .expect("the real path of the fake is accepted");
    assert_eq!(fake.state.assertion_grants(), 1);
    assert_eq!(unregistered.state.assertion_grants(), 0);
}

#[test]
fn presets_per_provider_and_cloud() {
    let parse = |extra: &str| -> AccountConfig {
        toml::from_str(&format!(
            "username = \"{USER}\"\nclient_id = \"cid\"\n{extra}"
        ))
        .unwrap()
    };
    let cases: &[(&str, &str, &str)] = &[
        (
            "provider = \"office365\"",
            "https://login.microsoftonline.com/common/oauth2/v2.0/token",
            "https://outlook.office.com/SMTP.Send",
        ),
        (
            "provider = \"office365\"\ncloud = \"usgov\"\ntenant = \"t\"",
            "https://login.microsoftonline.us/t/oauth2/v2.0/token",
            "https://outlook.office365.us/SMTP.Send",
        ),
        (
            "provider = \"office365\"\ncloud = \"china\"",
            "https://login.chinacloudapi.cn/common/oauth2/v2.0/token",
            "https://partner.outlook.cn/SMTP.Send",
        ),
        (
            "provider = \"gmail\"",
            "https://oauth2.googleapis.com/token",
            "https://mail.google.com/",
        ),
    ];
    for (extra, token_url, scope) in cases {
        let e = provider::endpoints(&parse(extra));
        assert_eq!(e.token_url, *token_url, "{extra}");
        assert!(
            e.scopes.iter().any(|s| s == scope),
            "{extra}: {:?}",
            e.scopes
        );
    }
    let app = parse("provider = \"office365\"\ncloud = \"usgov\"\nflow = \"client_credentials\"");
    assert_eq!(
        provider::endpoints(&app).scopes,
        vec!["https://outlook.office365.us/.default".to_owned()]
    );
    assert_eq!(
        provider::mail_hosts(Cloud::China),
        (
            "partner.outlook.cn",
            "partner.outlook.cn",
            "smtp.partner.outlook.cn"
        )
    );
}

fn config_with(account: &str) -> String {
    format!(
        "[proxy]\nstate_dir = \"/tmp/unused\"\n\n[[account]]\nusername = \"{USER}\"\nclient_id = \"cid\"\n{account}\n"
    )
}

#[test]
fn flow_settings_are_validated_by_name() {
    let phc = xoauth2_proxy::auth::password::hash_password(b"pw").unwrap();
    let cert = fixture("client_cert.pem");
    let key = fixture("client_key.pem");
    let good: &[String] = &[
        "provider = \"office365\"\ncloud = \"usgov\"".into(),
        "provider = \"office365\"\nflow = \"authorization_code\"".into(),
        "provider = \"gmail\"\nflow = \"authorization_code\"\nclient_secret = \"x\"".into(),
        format!(
            "provider = \"office365\"\nflow = \"client_credentials\"\npassword_hash = \"{phc}\"\nclient_secret = \"s\""
        ),
        format!(
            "provider = \"office365\"\nflow = \"client_credentials\"\npassword_hash = \"{phc}\"\nclient_certificate = \"{cert}\"\nclient_key = \"{key}\""
        ),
    ];
    for text in good {
        Config::parse(&config_with(text), Path::new("proxy.toml"))
            .unwrap_or_else(|e| panic!("{text}: {e}"));
    }
    let bad: &[(String, &str)] = &[
        ("provider = \"office365\"\ncloud = \"mars\"".into(), "cloud"),
        ("provider = \"gmail\"\ncloud = \"usgov\"".into(), "account[0].cloud"),
        ("provider = \"gmail\"\ntenant = \"t\"".into(), "account[0].tenant"),
        ("provider = \"gmail\"\nflow = \"client_credentials\"".into(), "account[0].flow"),
        (
            "provider = \"custom\"\ntoken_url = \"https://x/t\"\nscopes = [\"s\"]\nflow = \"authorization_code\"".into(),
            "account[0].authorize_url",
        ),
        (
            "provider = \"office365\"\nflow = \"client_credentials\"\nclient_secret = \"s\"".into(),
            "account[0].password_hash",
        ),
        (
            format!("provider = \"office365\"\nflow = \"client_credentials\"\npassword_hash = \"{phc}\""),
            "account[0].client_secret",
        ),
        (
            format!("provider = \"office365\"\nclient_certificate = \"{cert}\""),
            "account[0].client_key",
        ),
        (
            format!("provider = \"office365\"\nclient_key = \"{key}\""),
            "account[0].client_certificate",
        ),
        (
            format!("provider = \"office365\"\nclient_certificate = \"{cert}\"\nclient_key = \"{key}\"\nclient_secret = \"s\""),
            "account[0].client_secret",
        ),
        (
            format!("provider = \"office365\"\nclient_certificate = \"{cert}\"\nclient_key = \"{}\"", fixture("ec_key.pem")),
            "account[0].client_key",
        ),
        (
            format!("provider = \"office365\"\nclient_certificate = \"{key}\"\nclient_key = \"{key}\""),
            "account[0].client_certificate",
        ),
        (
            format!("provider = \"office365\"\nclient_certificate = \"{cert}\"\nclient_key = \"/nonexistent/key.pem\""),
            "account[0].client_key",
        ),
    ];
    for (text, needle) in bad {
        let err = Config::parse(&config_with(text), Path::new("proxy.toml"))
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(needle),
            "`{text}`: `{err}` does not name {needle}"
        );
        assert!(!err.contains("MII"), "{err}");
    }
}

/// Runs `xoauth2-proxy authorize` on a config pointing at `fake`; returns the child and
/// a channel of its stdout lines.
fn spawn_authorize(
    dir: &Path,
    account: &str,
    args: &[&str],
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    spawn_authorize_with(dir, account, args, &format!("{SIGN_IN_PASSWORD}\n"))
}

/// [`spawn_authorize`] with `--password-stdin` fed `stdin`.
fn spawn_authorize_with(
    dir: &Path,
    account: &str,
    args: &[&str],
    stdin: &str,
) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let state_dir = dir.join("state");
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nstate_dir = \"{}\"\n\n[[account]]\n{account}\n",
            state_dir.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(&file)
        .arg("authorize")
        .arg(USER)
        .arg("--password-stdin")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run authorize");
    {
        use std::io::Write as _;
        let mut input = child.stdin.take().unwrap();
        // A child that exits before reading (a refused flag) closes the pipe.
        let _ = input.write_all(stdin.as_bytes());
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

/// Waits for the child to end (bounded), returning its status and stderr.
async fn wait_exit(mut child: std::process::Child) -> (std::process::ExitStatus, String) {
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    panic!("authorize did not exit");
}

fn browser_account(fake: &FakeTokenServer) -> String {
    format!(
        "username = \"{USER}\"\nprovider = \"office365\"\nclient_id = \"cid\"\n\
         flow = \"authorization_code\"\nauthorize_url = \"{}\"\ntoken_url = \"{}\"",
        fake.authorize_url(),
        fake.token_url()
    )
}

/// The printed authorize URL (the first stdout line that is one).
fn printed_url(lines: &std::sync::mpsc::Receiver<String>, fake: &FakeTokenServer) -> String {
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(60))
            .expect("authorize printed the URL");
        if line.starts_with(&fake.authorize_url()) {
            return line;
        }
    }
}

#[tokio::test]
async fn authorize_browser_end_to_end() {
    let fake = FakeTokenServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The account's flow picks the browser; --no-open keeps xdg-open out of the test.
    let (child, lines) = spawn_authorize(dir.path(), &browser_account(&fake), &["--no-open"]);
    let url = printed_url(&lines, &fake);
    let (location, params) = visit(&url).await;
    assert!(location.starts_with("http://localhost:"), "{location}");
    assert!(params.contains_key("code"));
    // The browser follows the redirect to the loopback listener (on 127.0.0.1).
    let callback = location.replacen("http://localhost:", "http://127.0.0.1:", 1);
    let page = browser().get(&callback).send().await.expect("the callback");
    assert!(page.status().is_success());
    let body = page.text().await.unwrap();
    assert!(body.contains("Signed in"), "{body}");
    let (status, stderr) = wait_exit(child).await;
    assert!(status.success(), "{stderr}");
    let state = dir.path().join("state");
    let text = std::fs::read_to_string(TokenStore::new(&state).path_for(USER)).unwrap();
    let stored = open_stored(&state, USER, SIGN_IN_PASSWORD).expect("tokens saved");
    let refresh = stored.refresh_token.expect("a refresh token");
    assert!(fake.state.is_valid_refresh_token(refresh.expose_secret()));
    assert!(!text.contains(refresh.expose_secret()), "sealed: {text}");
    assert_eq!(fake.state.codes_redeemed(), 1);
}

#[tokio::test]
async fn authorize_browser_reports_a_refusal() {
    let fake = FakeTokenServer::start().await;
    fake.state
        .set_authorize_error(Some(("access_denied", "The user declined.")));
    let dir = tempfile::tempdir().unwrap();
    let (child, lines) = spawn_authorize(
        dir.path(),
        &browser_account(&fake).replace("authorization_code", "device_code"),
        &["--browser", "--no-open"],
    );
    let url = printed_url(&lines, &fake);
    let (location, _) = visit(&url).await;
    let callback = location.replacen("http://localhost:", "http://127.0.0.1:", 1);
    let page = browser().get(&callback).send().await.unwrap();
    let body = page.text().await.unwrap();
    assert!(body.contains("access_denied"), "{body}");
    let (status, stderr) = wait_exit(child).await;
    assert!(!status.success());
    assert!(
        stderr.contains("access_denied") && stderr.contains("declined"),
        "{stderr}"
    );
    assert!(
        TokenStore::new(&dir.path().join("state"))
            .load(USER)
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn authorize_checks_an_app_only_account() {
    let fake = FakeTokenServer::start().await;
    fake.state.register_client_certificate(CERT);
    let phc = xoauth2_proxy::auth::password::hash_password(b"pw").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let account = format!(
        "username = \"{USER}\"\nprovider = \"office365\"\nclient_id = \"cid\"\n\
         flow = \"client_credentials\"\ntoken_url = \"{}\"\npassword_hash = \"{phc}\"\n\
         client_certificate = \"{}\"\nclient_key = \"{}\"",
        fake.token_url(),
        fixture("client_cert.pem"),
        fixture("client_key.pem")
    );
    let (child, lines) = spawn_authorize(dir.path(), &account, &[]);
    let (status, stderr) = wait_exit(child).await;
    assert!(status.success(), "{stderr}");
    let out: Vec<String> = lines.try_iter().collect();
    assert!(out.join("\n").contains("app-only"), "{out:?}");
    assert_eq!(fake.state.assertion_grants(), 1);
    assert!(
        TokenStore::new(&dir.path().join("state"))
            .load(USER)
            .unwrap()
            .is_none()
    );
    // --browser makes no sense for it.
    let (child, _) = spawn_authorize(dir.path(), &account, &["--browser"]);
    let (status, stderr) = wait_exit(child).await;
    assert!(!status.success());
    assert!(stderr.contains("client_credentials"), "{stderr}");
    // --browser and --device together are refused by the parser.
    let (child, _) = spawn_authorize(dir.path(), &account, &["--browser", "--device"]);
    let (status, _) = wait_exit(child).await;
    assert!(!status.success());
}

#[tokio::test]
async fn authorize_signs_in_an_address_under_a_catch_all() {
    let fake = FakeTokenServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let domain = USER.split_once('@').unwrap().1;
    let account = browser_account(&fake).replace(
        &format!("username = \"{USER}\""),
        &format!("username = \"@{domain}\""),
    );
    let (child, lines) = spawn_authorize(dir.path(), &account, &["--no-open"]);
    let url = printed_url(&lines, &fake);
    let hint = format!("login_hint={}", USER.replace('@', "%40"));
    assert!(url.contains(&hint), "the address is the hint: {url}");
    let (location, _) = visit(&url).await;
    let callback = location.replacen("http://localhost:", "http://127.0.0.1:", 1);
    let page = browser().get(&callback).send().await.expect("the callback");
    assert!(page.status().is_success());
    let (status, stderr) = wait_exit(child).await;
    assert!(status.success(), "{stderr}");
    let store = TokenStore::new(&dir.path().join("state"));
    assert!(
        open_stored(store.dir().parent().unwrap(), USER, SIGN_IN_PASSWORD).is_some(),
        "saved under the address"
    );
    assert!(store.load_entry(&format!("@{domain}")).unwrap().is_none());
}

/// An account of `flow` whose device code and token URLs are the fake's.
fn device_account(fake: &FakeTokenServer, extra: &str) -> AccountConfig {
    account(
        fake,
        "device_code",
        &format!("device_code_url = \"{}\"\n{extra}", fake.devicecode_url()),
    )
}

/// The attack, in the library: the sign-in started for the account is
/// completed by another Microsoft user. Both grants refuse it, naming who
/// signed in and which address was expected.
#[tokio::test]
async fn a_sign_in_by_another_user_gives_no_tokens() {
    let fake = FakeTokenServer::start().await;
    fake.state.set_pending_polls(0);
    fake.state.set_signed_in_user(Some("mallory@evil.test"));
    let a = account(&fake, "authorization_code", "");
    let (url, pending) = PendingSignIn::start(&a, REDIRECT).unwrap();
    let (_, params) = visit(&url).await;
    let state = params["state"].clone();
    let err = finish_sign_in(pending, &a, &http(), &state, &params["code"])
        .await
        .unwrap_err();
    let FlowError::Identity(IdentityError::Mismatch {
        signed_in,
        expected,
    }) = &err
    else {
        panic!("{err:?}");
    };
    assert_eq!(
        (signed_in.as_str(), expected.as_str()),
        ("mallory@evil.test", USER)
    );

    let err = flows::device_code(&device_account(&fake, ""), &http(), |_| {})
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "signed in as mallory@evil.test, but this sign-in was for {USER}"
        )),
        "{err}"
    );
    // Every sign-in asked who signed in.
    assert!(
        fake.state.authorize_log()[0]
            .scope
            .as_ref()
            .unwrap()
            .contains("openid")
    );
    let devicecode = fake
        .state
        .recorded_requests()
        .into_iter()
        .find(|r| r.path.ends_with("/devicecode"))
        .unwrap();
    assert!(devicecode.form["scope"].split(' ').any(|s| s == "openid"));
    // The account's own user is accepted.
    fake.state.set_signed_in_user(Some(&USER.to_uppercase()));
    flows::device_code(&device_account(&fake, ""), &http(), |_| {})
        .await
        .expect("the owner signs in");
}

/// The attack through `authorize` (browser and device code): the owner's
/// sealed entry stays byte for byte, the error names both users.
#[tokio::test]
async fn authorize_by_another_user_stores_nothing_and_keeps_the_entry() {
    let fake = FakeTokenServer::start().await;
    fake.state.set_pending_polls(0);
    let dir = tempfile::tempdir().unwrap();
    let account = format!(
        "{}\ndevice_code_url = \"{}\"",
        browser_account(&fake),
        fake.devicecode_url()
    );
    // The owner signed in first, with the owner's password.
    let (child, lines) = spawn_authorize(dir.path(), &account, &["--no-open"]);
    let url = printed_url(&lines, &fake);
    let (location, _) = visit(&url).await;
    let callback = location.replacen("http://localhost:", "http://127.0.0.1:", 1);
    browser().get(&callback).send().await.expect("the callback");
    let (status, stderr) = wait_exit(child).await;
    assert!(status.success(), "{stderr}");
    let file = TokenStore::new(&dir.path().join("state")).path_for(USER);
    let before = std::fs::read(&file).unwrap();

    fake.state.set_signed_in_user(Some("mallory@evil.test"));
    let (child, lines) =
        spawn_authorize_with(dir.path(), &account, &["--no-open"], "mallory's password\n");
    let url = printed_url(&lines, &fake);
    let (location, _) = visit(&url).await;
    let callback = location.replacen("http://localhost:", "http://127.0.0.1:", 1);
    let page = browser().get(&callback).send().await.expect("the callback");
    let body = page.text().await.unwrap();
    assert!(body.contains("mallory@evil.test"), "{body}");
    let (status, stderr) = wait_exit(child).await;
    assert!(!status.success());
    assert!(
        stderr.contains(&format!(
            "signed in as mallory@evil.test, but this sign-in was for {USER}"
        )),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "browser: entry intact"
    );

    let (child, _lines) =
        spawn_authorize_with(dir.path(), &account, &["--device"], "mallory's password\n");
    let (status, stderr) = wait_exit(child).await;
    assert!(!status.success());
    assert!(
        stderr.contains("signed in as mallory@evil.test") && stderr.contains(USER),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "device: entry intact"
    );
    let stored = open_stored(&dir.path().join("state"), USER, SIGN_IN_PASSWORD).unwrap();
    assert!(
        fake.state
            .is_valid_refresh_token(stored.refresh_token.unwrap().expose_secret())
    );
}

/// An address under a catch-all: any user of the domain may sign in for
/// it; a user of another domain may not.
#[tokio::test]
async fn authorize_under_a_catch_all_takes_users_of_its_domain_only() {
    let fake = FakeTokenServer::start().await;
    fake.state.set_pending_polls(0);
    let domain = USER.split_once('@').unwrap().1;
    let account = format!(
        "username = \"@{domain}\"\nprovider = \"office365\"\nclient_id = \"cid\"\n\
         token_url = \"{}\"\ndevice_code_url = \"{}\"",
        fake.token_url(),
        fake.devicecode_url()
    );
    let dir = tempfile::tempdir().unwrap();
    fake.state
        .set_signed_in_user(Some(&format!("carol@{domain}")));
    let (child, _lines) = spawn_authorize(dir.path(), &account, &["--device"]);
    let (status, stderr) = wait_exit(child).await;
    assert!(status.success(), "{stderr}");
    assert!(open_stored(&dir.path().join("state"), USER, SIGN_IN_PASSWORD).is_some());

    let dir = tempfile::tempdir().unwrap();
    fake.state
        .set_signed_in_user(Some(&format!("eve@not{domain}")));
    let (child, _lines) = spawn_authorize(dir.path(), &account, &["--device"]);
    let (status, stderr) = wait_exit(child).await;
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("signed in as eve@not{domain}"))
            && stderr.contains(&format!("(an address @{domain})")),
        "{stderr}"
    );
    assert!(open_stored(&dir.path().join("state"), USER, SIGN_IN_PASSWORD).is_none());
}

/// The local password is checked before anything is asked of the
/// provider: too short or missing, and nothing is stored.
#[tokio::test]
async fn authorize_refuses_a_short_or_missing_password_before_signing_in() {
    let fake = FakeTokenServer::start().await;
    let account = format!(
        "{}\ndevice_code_url = \"{}\"",
        browser_account(&fake),
        fake.devicecode_url()
    );
    for (stdin, says) in [
        ("seven77\n", "too short: use at least 8 characters"),
        ("\n", "choose a local password"),
        ("", "choose a local password"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let (child, _lines) = spawn_authorize_with(dir.path(), &account, &["--device"], stdin);
        let (status, stderr) = wait_exit(child).await;
        assert!(!status.success());
        assert!(stderr.contains(says), "{stdin:?}: {stderr}");
        assert!(!stderr.contains("seven77"), "{stderr}");
        assert!(
            !TokenStore::new(&dir.path().join("state"))
                .path_for(USER)
                .exists()
        );
    }
    assert_eq!(fake.state.total_requests(), 0);
    assert_eq!(fake.state.devicecode_requests(), 0);
}

/// A custom provider without OpenID Connect: refused unless the account
/// says `verify_identity = false`, which works and is logged as a warning.
/// An app-only account is not affected (no user signs in).
#[tokio::test]
async fn verify_identity_false_for_a_provider_without_id_tokens() {
    let fake = FakeTokenServer::start().await;
    fake.state.set_pending_polls(0);
    fake.state.set_id_tokens(false);
    let custom = format!(
        "username = \"{USER}\"\nprovider = \"custom\"\nclient_id = \"cid\"\n\
         token_url = \"{}\"\ndevice_code_url = \"{}\"\nscopes = [\"mail\", \"offline_access\"]",
        fake.token_url(),
        fake.devicecode_url()
    );
    let dir = tempfile::tempdir().unwrap();
    let (child, _lines) = spawn_authorize(dir.path(), &custom, &["--device"]);
    let (status, stderr) = wait_exit(child).await;
    assert!(!status.success());
    assert!(stderr.contains("returned no id_token"), "{stderr}");
    assert!(stderr.contains("verify_identity = false"), "{stderr}");
    assert!(
        !TokenStore::new(&dir.path().join("state"))
            .path_for(USER)
            .exists()
    );

    let (child, _lines) = spawn_authorize(
        dir.path(),
        &format!("{custom}\nverify_identity = false"),
        &["--device"],
    );
    let (status, stderr) = wait_exit(child).await;
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.contains("WARN") && stderr.contains("without checking who signed in"),
        "{stderr}"
    );
    assert!(open_stored(&dir.path().join("state"), USER, SIGN_IN_PASSWORD).is_some());
    // The opt-out asks for no identity scopes.
    let devicecode = fake
        .state
        .recorded_requests()
        .into_iter()
        .rfind(|r| r.path.ends_with("/devicecode"))
        .unwrap();
    assert_eq!(devicecode.form["scope"], "mail offline_access");

    // Office 365 always says who signed in: the opt-out is refused there.
    let dir = tempfile::tempdir().unwrap();
    let (child, _lines) = spawn_authorize(
        dir.path(),
        &format!("{}\nverify_identity = false", browser_account(&fake)),
        &["--no-open"],
    );
    let (status, stderr) = wait_exit(child).await;
    assert!(!status.success());
    assert!(stderr.contains("verify_identity"), "{stderr}");
}
