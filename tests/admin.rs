//! The local page, over 127.0.0.1: account states, the guards (foreign
//! `Host`, foreign `Origin`, CSRF), a browser sign-in without a browser
//! (the fake authorize endpoint redirects straight back), the device code
//! panel, and the page's address in a client's "sign in first" error. The
//! same sign-in in a real Chromium is `browser_sign_in` (ignored; run by
//! `.ci/browser.sh`).

mod harness;
mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use harness::{PASSWORD, config_text, imap, seed_tokens, start};
use reqwest::StatusCode;
use reqwest::header::{HOST, LOCATION, ORIGIN, REFERER};
use support::*;
use xoauth2_proxy::Running;
use xoauth2_proxy::config::Config;

/// Form fields, as posted.
type Form<'a> = Vec<(&'a str, &'a str)>;

/// A catch-all account added to every test's configuration.
const DOMAIN: &str = "@catchall.test";
/// The local password chosen in the page's sign-in form.
const SIGN_IN_PASSWORD: &str = "correct horse 1";

struct Page {
    pki: TestPki,
    tokens: FakeTokenServer,
    imap_server: FakeImapServer,
    state_dir: tempfile::TempDir,
    running: Running,
    http: reqwest::Client,
    /// What the account's tokens are sealed with: the seeded entry's, or
    /// the one chosen at the page's sign-in.
    password: &'static str,
}

fn config(
    pki: &TestPki,
    state_dir: &Path,
    tokens: &FakeTokenServer,
    imap_addr: SocketAddr,
) -> String {
    let base = tokens.url();
    let mut text = config_text(
        pki,
        state_dir,
        &base,
        &[imap(imap_addr)],
        "admin_listen = \"127.0.0.1:0\"\n",
    );
    text.push_str(&format!("authorize_url = \"{base}/authorize\"\n"));
    text.push_str(&format!(
        "\n[[account]]\nusername = \"{DOMAIN}\"\nprovider = \"custom\"\nclient_id = \"test-client\"\n\
         token_url = \"{base}/token\"\nauthorize_url = \"{base}/authorize\"\nscopes = [\"x\"]\n"
    ));
    text
}

impl Page {
    async fn start(seeded: bool) -> Page {
        let pki = TestPki::new();
        let tokens = FakeTokenServer::start().await;
        let imap_server =
            FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
        let state_dir = tempfile::tempdir().expect("tempdir");
        if seeded {
            seed_tokens(state_dir.path(), &tokens);
        }
        let text = config(&pki, state_dir.path(), &tokens, imap_server.addr);
        let running = start(&text).await;
        assert!(running.admin_addr.is_some(), "the page is served");
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        Page {
            pki,
            tokens,
            imap_server,
            state_dir,
            running,
            http,
            password: if seeded { PASSWORD } else { SIGN_IN_PASSWORD },
        }
    }

    fn port(&self) -> u16 {
        self.running.admin_addr.unwrap().port()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port())
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port())
    }

    async fn html(&self) -> String {
        let resp = self.http.get(self.url("/")).send().await.expect("GET /");
        assert_eq!(resp.status(), StatusCode::OK);
        resp.text().await.expect("body")
    }

    async fn csrf(&self) -> String {
        let html = self.html().await;
        let at = html
            .find("name=\"csrf\" value=\"")
            .expect("a form with a CSRF token")
            + "name=\"csrf\" value=\"".len();
        html[at..].split('"').next().unwrap().to_owned()
    }

    async fn post(
        &self,
        path: &str,
        form: &[(&str, &str)],
        origin: Option<&str>,
    ) -> reqwest::Response {
        let mut req = self.http.post(self.url(path)).form(form);
        if let Some(o) = origin {
            req = req.header(ORIGIN, o);
        }
        req.send().await.expect("POST")
    }

    /// The `data-state` of `account`'s row.
    async fn state_of(&self, account: &str) -> String {
        let html = self.html().await;
        let marker = format!("data-account=\"{account}\" data-state=\"");
        let at = html
            .find(&marker)
            .unwrap_or_else(|| panic!("no row for {account} in {html}"))
            + marker.len();
        html[at..].split('"').next().unwrap().to_owned()
    }

    /// POST /signin, then the fake authorize endpoint, then the callback:
    /// what a browser does when the user clicks Sign in.
    async fn sign_in(&self, account: &str) -> reqwest::Response {
        let csrf = self.csrf().await;
        let resp = self
            .post(
                "/signin",
                &[
                    ("account", account),
                    ("csrf", &csrf),
                    ("password", SIGN_IN_PASSWORD),
                    ("password2", SIGN_IN_PASSWORD),
                ],
                Some(&self.origin()),
            )
            .await;
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let authorize = location(&resp);
        assert!(
            authorize.starts_with(&format!("{}/authorize?", self.tokens.url())),
            "{authorize}"
        );
        let resp = self.http.get(&authorize).send().await.expect("authorize");
        assert_eq!(resp.status(), StatusCode::FOUND);
        let callback = location(&resp);
        assert!(
            callback.starts_with(&format!("http://localhost:{}/callback?", self.port())),
            "{callback}"
        );
        self.http.get(&callback).send().await.expect("callback")
    }

    async fn imap_login(&self) -> String {
        self.imap_login_with(self.password).await
    }

    async fn imap_login_with(&self, password: &str) -> String {
        let mut c = TestClient::connect(self.running.addrs[0]).await;
        c.read_line().await;
        c.send(format!("a LOGIN {USER} \"{password}\"\r\n").as_bytes())
            .await;
        let lines = c.read_until_tagged("a").await;
        String::from_utf8_lossy(lines.last().expect("tagged")).into_owned()
    }
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(LOCATION)
        .expect("a Location")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_page_shows_accounts_states_and_listeners() {
    let page = Page::start(true).await;
    let resp = page.http.get(page.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(
        csp.contains(&format!("form-action 'self' {}", page.tokens.url())),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["cache-control"], "no-store");
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let html = resp.text().await.unwrap();
    assert!(
        !html.contains("<script") && !html.contains(" src="),
        "no script, no asset"
    );
    assert_eq!(page.state_of(USER).await, "locked");
    assert!(
        html.contains("locked until a client logs in with the password chosen at sign-in"),
        "{html}"
    );
    assert_eq!(page.state_of(DOMAIN).await, "catch-all");
    assert!(
        html.contains("placeholder=\"name@catchall.test\""),
        "{html}"
    );
    let listen = page.running.addrs[0].to_string();
    assert!(
        html.contains(&format!("<td>imap</td><td>{listen}</td>")),
        "{html}"
    );
    assert!(html.contains(&format!("http://localhost:{}/", page.port())));
    assert!(
        html.contains("listening, 0 connections; upstream not contacted yet"),
        "{html}"
    );

    // After a client login: active, with the time left; the upstream answered.
    assert!(page.imap_login().await.starts_with("a OK"));
    assert_eq!(page.state_of(USER).await, "active");
    let html = page.html().await;
    assert!(html.contains("token expires in 59 min"), "{html}");
    assert!(html.contains("; upstream answered "), "{html}");

    let unseeded = Page::start(false).await;
    assert_eq!(unseeded.state_of(USER).await, "needs-sign-in");
}

#[tokio::test]
async fn a_foreign_host_is_refused() {
    let page = Page::start(true).await;
    let port = page.port();
    for host in [
        format!("evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
        "localhost".to_owned(),
    ] {
        let resp = page
            .http
            .get(page.url("/"))
            .header(HOST, &host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST, "{host}");
        assert_eq!(resp.headers()["x-frame-options"], "DENY");
        let body = resp.text().await.unwrap();
        assert!(!body.contains("csrf"), "{body}");
    }
    for host in [format!("localhost:{port}"), format!("[::1]:{port}")] {
        let resp = page
            .http
            .get(page.url("/"))
            .header(HOST, &host)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{host}");
    }
    // A POST with a foreign Host is refused before anything else.
    let csrf = page.csrf().await;
    let resp = page
        .http
        .post(page.url("/signin"))
        .header(HOST, format!("evil.example:{port}"))
        .header(ORIGIN, format!("http://evil.example:{port}"))
        .form(&[("account", USER), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::MISDIRECTED_REQUEST);
}

#[tokio::test]
async fn posts_need_our_origin_and_the_csrf_token() {
    let page = Page::start(false).await;
    let csrf = page.csrf().await;
    let ours = page.origin();
    let refused: Vec<(&str, Form<'_>, Option<&str>)> = vec![
        ("no token", vec![("account", USER)], Some(&ours)),
        (
            "empty token",
            vec![("account", USER), ("csrf", "")],
            Some(&ours),
        ),
        (
            "wrong token",
            vec![("account", USER), ("csrf", "x".repeat(43).leak())],
            Some(&ours),
        ),
        (
            "foreign origin",
            vec![("account", USER), ("csrf", &csrf)],
            Some("http://evil.example"),
        ),
        (
            "null origin",
            vec![("account", USER), ("csrf", &csrf)],
            Some("null"),
        ),
        (
            "no origin, no referer",
            vec![("account", USER), ("csrf", &csrf)],
            None,
        ),
    ];
    for (what, form, origin) in &refused {
        for path in ["/signin", "/device"] {
            let resp = page.post(path, form, *origin).await;
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{what} {path}");
        }
    }
    // A Referer of ours stands in for a missing Origin; a foreign one does not.
    let form = [("account", USER), ("csrf", csrf.as_str())];
    let resp = page
        .http
        .post(page.url("/signin"))
        .header(REFERER, "http://evil.example/")
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let resp = page
        .http
        .post(page.url("/signin"))
        .header(REFERER, page.url("/"))
        .form(&form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    // Nothing refused reached the provider; the accepted one only made a URL.
    assert_eq!(page.tokens.state.authorize_requests(), 0);
    assert_eq!(page.tokens.state.total_requests(), 0);
    // An oversized body is refused.
    let big = "a".repeat(64 * 1024);
    let resp = page
        .post(
            "/signin",
            &[("account", big.as_str()), ("csrf", &csrf)],
            Some(&ours),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test]
async fn sign_in_through_the_page_seals_with_the_password_chosen_there() {
    let page = Page::start(false).await;
    assert_eq!(page.state_of(USER).await, "needs-sign-in");
    let resp = page.sign_in(USER).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/");
    assert_eq!(page.state_of(USER).await, "locked");
    let html = page.html().await;
    assert!(
        html.contains("signed in. Now log in from your mail client"),
        "{html}"
    );
    // The code was exchanged with PKCE, and the tokens are on disk, sealed
    // from their first write under the password chosen in the form.
    let form = page
        .tokens
        .state
        .recorded_requests()
        .into_iter()
        .find(|r| r.form.get("grant_type").map(String::as_str) == Some("authorization_code"))
        .expect("a code exchange")
        .form;
    assert!(form.contains_key("code_verifier"), "{form:?}");
    assert_eq!(
        form.get("redirect_uri").map(String::as_str),
        Some(format!("http://localhost:{}/callback", page.port()).as_str())
    );
    let file = xoauth2_proxy::auth::vault::TokenStore::new(page.state_dir.path()).path_for(USER);
    let text = std::fs::read_to_string(&file).unwrap();
    let issued = page.tokens.state.latest_refresh_token().unwrap();
    assert!(
        text.contains("\"sealed\"") && !text.contains(&issued),
        "{text}"
    );

    // Another local client that logs in first does not choose the password.
    let reply = page.imap_login_with("first come first served").await;
    assert!(reply.starts_with("a NO"), "{reply}");
    let reply = page.imap_login().await;
    assert!(reply.starts_with("a OK"), "{reply}");
    assert_eq!(page.state_of(USER).await, "active");
    assert!(page.html().await.contains("token expires in"));
    // The same answer again is refused: a state is used once.
    let again = page
        .http
        .get(page.url("/callback?code=ac-1&state=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_catch_all_address_signs_in_on_its_own() {
    let page = Page::start(false).await;
    let address = "bob@catchall.test";
    let resp = page.sign_in(address).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.state_of(address).await, "locked");
    // The domain itself cannot sign in.
    let csrf = page.csrf().await;
    let resp = page
        .post(
            "/signin",
            &[("account", DOMAIN), ("csrf", &csrf)],
            Some(&page.origin()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/");
    assert!(page.html().await.contains("enter one address of it"));
}

#[tokio::test]
async fn a_denied_or_forged_answer_signs_nothing_in() {
    let page = Page::start(false).await;
    let csrf = page.csrf().await;
    let resp = page
        .post(
            "/signin",
            &[
                ("account", USER),
                ("csrf", &csrf),
                ("password", SIGN_IN_PASSWORD),
                ("password2", SIGN_IN_PASSWORD),
            ],
            Some(&page.origin()),
        )
        .await;
    let authorize = reqwest::Url::parse(&location(&resp)).unwrap();
    let state = authorize
        .query_pairs()
        .find(|(k, _)| k == "state")
        .map(|(_, v)| v.into_owned())
        .expect("a state");
    // Forged: an unknown state.
    let resp = page
        .http
        .get(page.url("/callback?code=x&state=forged"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // Denied by the user: the reason is on the page, escaped.
    let resp = page
        .http
        .get(page.url(&format!(
            "/callback?error=access_denied&error_description=%3Cb%3Eno%3C%2Fb%3E&state={state}"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let html = page.html().await;
    assert!(html.contains("access_denied"), "{html}");
    assert!(html.contains("&lt;b&gt;no&lt;/b&gt;"), "{html}");
    assert_eq!(page.state_of(USER).await, "needs-sign-in");
}

#[tokio::test]
async fn device_code_sign_in_from_the_page() {
    let page = Page::start(false).await;
    let csrf = page.csrf().await;
    let resp = page
        .post(
            "/device",
            &[
                ("account", USER),
                ("csrf", &csrf),
                ("password", SIGN_IN_PASSWORD),
                ("password2", SIGN_IN_PASSWORD),
            ],
            Some(&page.origin()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut saw_code = false;
    loop {
        let html = page.html().await;
        saw_code |= html.contains("FAKE0001") && html.contains("http-equiv=\"refresh\"");
        if html.contains("signed in with the code") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "device sign-in did not finish: {html}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_code, "the panel showed the code while waiting");
    assert_eq!(page.state_of(USER).await, "locked");
    assert!(page.imap_login().await.starts_with("a OK"));
}

#[tokio::test]
async fn a_client_that_must_sign_in_first_is_told_the_page_address() {
    let page = Page::start(false).await;
    let reply = page.imap_login().await;
    assert!(reply.starts_with("a NO"), "{reply}");
    assert!(
        reply.contains(&format!("http://localhost:{}/", page.port())),
        "{reply}"
    );
}

#[tokio::test]
async fn the_page_survives_a_reload_and_stops_at_shutdown() {
    let page = Page::start(true).await;
    let addr = page.running.admin_addr.unwrap();
    let mut text = config(
        &page.pki,
        page.state_dir.path(),
        &page.tokens,
        page.imap_server.addr,
    );
    text.push_str(&format!(
        "\n[[account]]\nusername = \"new@example.test\"\nprovider = \"custom\"\nclient_id = \"c\"\n\
         token_url = \"{}/token\"\nscopes = [\"x\"]\n",
        page.tokens.url()
    ));
    let config = Config::parse(&text, Path::new("test.toml")).unwrap();
    let Page { running, http, .. } = page;
    let (running, outcome) = running.reload(config).await;
    outcome.expect("reload");
    assert_eq!(running.admin_addr, Some(addr), "the page keeps its port");
    let html = http
        .get(format!("http://{addr}/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(html.contains("data-account=\"new@example.test\""), "{html}");
    // The new configuration's sessions name the page too.
    assert_eq!(
        running.context.sign_in_page.get().map(String::as_str),
        Some(format!("http://localhost:{}/", addr.port()).as_str())
    );
    running.shutdown().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "closed at shutdown"
    );
}

/// A port already taken: the proxy runs without the page.
#[tokio::test]
async fn a_page_that_cannot_bind_does_not_stop_the_proxy() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let state_dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(harness::dead_addr().await)],
        &format!("admin_listen = \"{}\"\n", taken.local_addr().unwrap()),
    );
    let running = start(&text).await;
    assert_eq!(running.admin_addr, None);
    assert!(running.context.sign_in_page.get().is_none());
    assert_eq!(running.addrs.len(), 1);
}

/// The sign-in in a real Chromium (`tests/browser/signin.mjs`, driven by
/// `.ci/browser.sh`): click Sign in, the fake provider sends the browser
/// back, the row reads "locked until a client logs in…"; then an IMAP login
/// with the password typed into the form succeeds with the token the page
/// obtained.
#[tokio::test]
#[ignore = "needs Chromium and node (run by .ci/browser.sh)"]
async fn browser_sign_in() {
    let page = Page::start(false).await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let shots = root.join("target").join("browser");
    std::fs::create_dir_all(&shots).unwrap();
    let url = format!("http://localhost:{}/", page.port());
    let script = root.join("tests/browser/signin.mjs");
    let args = (script, url, shots.clone());
    // The script's output goes straight to the terminal (CI's log).
    let status = tokio::task::spawn_blocking(move || {
        let (script, url, shots) = args;
        let mut child = std::process::Command::new("node")
            .arg(script)
            .arg(&url)
            .arg(USER)
            .arg(&shots)
            .env("SIGN_IN_PASSWORD", SIGN_IN_PASSWORD)
            .spawn()
            .expect("node runs");
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            if let Some(status) = child.try_wait().expect("wait for node") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the browser script did not finish in 180 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("the browser script ran");
    assert!(status.success(), "signin.mjs failed: {status}");
    assert!(shots.join("signin.png").exists());
    assert_eq!(page.tokens.state.authorize_requests(), 1);
    assert_eq!(page.state_of(USER).await, "locked");
    let reply = page.imap_login().await;
    assert!(reply.starts_with("a OK"), "{reply}");
    assert_eq!(page.state_of(USER).await, "active");
}

#[tokio::test]
async fn a_listener_line_counts_its_connections_and_names_an_upstream_failure() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let state_dir = tempfile::tempdir().expect("tempdir");
    seed_tokens(state_dir.path(), &tokens);
    let dead = harness::dead_addr().await;
    let running = start(&config(&pki, state_dir.path(), &tokens, dead)).await;
    let url = format!("http://127.0.0.1:{}/", running.admin_addr.unwrap().port());
    let mut client = TestClient::connect(running.addrs[0]).await;
    let greeting = client.read_line_str().await;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let html = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert!(
        html.contains("<td class=\"failed\">listening, 1 connection; upstream failed "),
        "{html}"
    );
    assert!(html.contains(&dead.to_string()), "{html}");
    drop(client);
}

/// Waits until the page's HTML contains `needle` (a device sign-in finishing
/// in the background); bounded.
async fn wait_for_page(page: &Page, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let html = page.html().await;
        if html.contains(needle) {
            return html;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in {html}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The attack: a local process starts a sign-in for the account from the
/// page and completes it with its own Microsoft account. Neither the browser
/// sign-in nor the device code one stores anything: the owner's sealed entry
/// stays byte for byte, the page names who signed in and who was expected,
/// and the owner's password still works.
#[tokio::test]
async fn a_sign_in_by_another_microsoft_user_stores_nothing() {
    let page = Page::start(true).await;
    let file = xoauth2_proxy::auth::vault::TokenStore::new(page.state_dir.path()).path_for(USER);
    let before = std::fs::read(&file).unwrap();
    page.tokens
        .state
        .set_signed_in_user(Some("mallory@evil.test"));

    let resp = page.sign_in(USER).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(location(&resp), "/");
    let html = page.html().await;
    assert!(
        html.contains("signed in as mallory@evil.test, but this sign-in was for user@example.test"),
        "{html}"
    );
    assert_eq!(
        page.tokens.state.codes_redeemed(),
        1,
        "the code was exchanged"
    );
    assert_eq!(std::fs::read(&file).unwrap(), before, "the entry is intact");

    let csrf = page.csrf().await;
    let resp = page
        .post(
            "/device",
            &[
                ("account", USER),
                ("csrf", &csrf),
                ("password", SIGN_IN_PASSWORD),
                ("password2", SIGN_IN_PASSWORD),
            ],
            Some(&page.origin()),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let html = wait_for_page(&page, "but this sign-in was for user@example.test").await;
    assert!(html.contains("mallory@evil.test"), "{html}");
    assert_eq!(std::fs::read(&file).unwrap(), before, "the entry is intact");

    // The owner's password still opens the owner's tokens; the attacker's does not.
    assert!(
        page.imap_login_with(SIGN_IN_PASSWORD)
            .await
            .starts_with("a NO")
    );
    let reply = page.imap_login().await;
    assert!(reply.starts_with("a OK"), "{reply}");
}

/// A catch-all takes any user of its domain for an address under it, and
/// no one outside it.
#[tokio::test]
async fn a_catch_all_sign_in_must_come_from_its_domain() {
    let page = Page::start(false).await;
    page.tokens
        .state
        .set_signed_in_user(Some("Carol@CatchAll.test"));
    page.sign_in("bob@catchall.test").await;
    assert_eq!(page.state_of("bob@catchall.test").await, "locked");

    page.tokens
        .state
        .set_signed_in_user(Some("eve@elsewhere.test"));
    page.sign_in("dave@catchall.test").await;
    let html = page.html().await;
    assert!(
        html.contains("signed in as eve@elsewhere.test")
            && html.contains("dave@catchall.test (an address @catchall.test)"),
        "{html}"
    );
    let store = xoauth2_proxy::auth::vault::TokenStore::new(page.state_dir.path());
    assert!(!store.path_for("dave@catchall.test").exists());
}

/// The password is chosen in the form: too short, or typed differently
/// twice, and nothing starts (no provider request), nothing is stored.
#[tokio::test]
async fn a_bad_password_in_the_form_starts_nothing() {
    let page = Page::start(false).await;
    let cases = [
        ("pw-1234", "pw-1234", "too short"),
        (
            "correct horse 1",
            "correct horse 2",
            "the two passwords differ",
        ),
        ("", "", "choose a local password"),
    ];
    for path in ["/signin", "/device"] {
        for (password, again, says) in cases {
            let csrf = page.csrf().await;
            let resp = page
                .post(
                    path,
                    &[
                        ("account", USER),
                        ("csrf", &csrf),
                        ("password", password),
                        ("password2", again),
                    ],
                    Some(&page.origin()),
                )
                .await;
            assert_eq!(resp.status(), StatusCode::SEE_OTHER);
            assert_eq!(location(&resp), "/", "{path} {says}");
            let html = page.html().await;
            assert!(html.contains(says), "{path}: {html}");
            assert!(!html.contains(password) || password.is_empty(), "{html}");
        }
    }
    assert_eq!(page.tokens.state.authorize_requests(), 0);
    assert_eq!(page.tokens.state.devicecode_requests(), 0);
    assert_eq!(page.tokens.state.total_requests(), 0);
    assert_eq!(page.state_of(USER).await, "needs-sign-in");
}
