//! `xoauth2-proxy authorize --paste` end to end: the real binary against the
//! fake identity platform on 127.0.0.1. The test plays the user: it reads
//! the printed sign-in link, "signs in" at the fake's authorize page (which
//! answers with the redirect), and pastes the address the browser would end
//! on back into the binary's standard input, after the password
//! (`--password-stdin`: the password is the first line, the address the
//! second). Also an account's own `redirect_uri`, for the paste and for the
//! browser on this machine.

mod support;

use std::io::{BufRead as _, Write as _};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use base64::Engine as _;
use secrecy::ExposeSecret as _;
use sha2::Digest as _;
use support::token_server::GRANT_AUTHORIZATION_CODE;
use support::*;
use xoauth2_proxy::auth::paste::MAX_PASTE_BYTES;
use xoauth2_proxy::auth::vault::TokenStore;

/// The local password given on the first line.
const PASSWORD: &str = "correct horse 1";

/// One `authorize` run: its standard input (kept open, to paste into
/// later), its standard output as lines, and the state folder.
struct Run {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    state: std::path::PathBuf,
}

/// An office365 account whose endpoints are the fake's.
fn account(fake: &FakeTokenServer, extra: &str) -> String {
    format!(
        "username = \"{USER}\"\nprovider = \"office365\"\nclient_id = \"cid\"\n\
         authorize_url = \"{}\"\ntoken_url = \"{}\"\n{extra}",
        fake.authorize_url(),
        fake.token_url()
    )
}

/// Starts `authorize USER` with `args` on a config holding `account`.
fn start(dir: &Path, account: &str, args: &[&str]) -> Run {
    let state = dir.join("state");
    let file = dir.join("proxy.toml");
    std::fs::write(
        &file,
        format!(
            "[proxy]\nstate_dir = \"{}\"\n\n[[account]]\n{account}\n",
            state.display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(&file)
        .arg("authorize")
        .arg(USER)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run authorize");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
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
    Run {
        stdin: child.stdin.take(),
        child,
        lines,
        state,
    }
}

/// [`start`] with `--password-stdin`, its first line (the password) written.
fn with_password(dir: &Path, account: &str, args: &[&str]) -> Run {
    let mut run = start(dir, account, &[args, &["--password-stdin"]].concat());
    run.type_in(&format!("{PASSWORD}\n"));
    run
}

impl Run {
    /// Writes `text` to its standard input (a child that already exited
    /// closed the pipe: ignored, its exit says why).
    fn type_in(&mut self, text: &str) {
        if let Some(stdin) = self.stdin.as_mut() {
            let _ = stdin.write_all(text.as_bytes());
            let _ = stdin.flush();
        }
    }

    /// Closes its standard input.
    fn end_input(&mut self) {
        self.stdin = None;
    }

    /// The printed sign-in link (the first line that is the fake's authorize
    /// address), and every line before it.
    fn link(&self, fake: &FakeTokenServer) -> (String, Vec<String>) {
        let mut before = Vec::new();
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("no sign-in link printed; got {before:?}"));
            if line.starts_with(&fake.authorize_url()) {
                return (line, before);
            }
            before.push(line);
        }
    }

    /// Waits (bounded) for it to end: its status, the rest of its output
    /// and its standard error.
    async fn finish(mut self) -> (std::process::ExitStatus, String, String) {
        self.end_input();
        for _ in 0..600 {
            if let Some(status) = self.child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut err)
                    .unwrap();
                let out: Vec<String> = self.lines.try_iter().collect();
                return (status, out.join("\n"), err);
            }
            // The fake answers on this test's runtime: wait without blocking it.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        panic!("authorize did not exit");
    }

    fn token_file(&self) -> std::path::PathBuf {
        TokenStore::new(&self.state).path_for(USER)
    }
}

/// Plays the browser at the fake's authorize page: where it is sent back to,
/// written as a browser's address bar shows it (`http://localhost/?code=…`).
async fn sign_in_at(url: &str) -> String {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = browser.get(url).send().await.expect("the authorize page");
    assert_eq!(resp.status(), reqwest::StatusCode::FOUND);
    let location = resp.headers()[reqwest::header::LOCATION]
        .to_str()
        .unwrap()
        .to_owned();
    reqwest::Url::parse(&location).unwrap().to_string()
}

fn query(url: &str, key: &str) -> String {
    reqwest::Url::parse(url)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| panic!("{url} has no {key}"))
}

#[tokio::test]
async fn a_pasted_address_signs_in_with_pkce_and_seals_the_tokens() {
    let fake = FakeTokenServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    // The account's flow picks the paste; no flag needed.
    let mut run = with_password(dir.path(), &account(&fake, "flow = \"paste\""), &[]);
    let (link, before) = run.link(&fake);
    assert!(
        before
            .iter()
            .any(|l| l.contains("the account's flow = \"paste\"")),
        "{before:?}"
    );
    assert_eq!(query(&link, "redirect_uri"), "http://localhost");
    let ended_on = sign_in_at(&link).await;
    assert!(
        ended_on.starts_with("http://localhost/?code="),
        "{ended_on}"
    );
    run.type_in(&format!("{ended_on}\n"));
    let token_file = run.token_file();
    let state_dir = run.state.clone();
    let (status, out, err) = run.finish().await;
    assert!(status.success(), "{err}");
    assert!(out.contains(&format!("Signed in {USER}")), "{out}");

    // The fake got the pasted code, the same redirect_uri and a verifier
    // whose S256 is the link's challenge.
    assert_eq!(fake.state.codes_redeemed(), 1);
    let form = fake
        .state
        .recorded_requests()
        .into_iter()
        .rfind(|r| r.form.get("grant_type").map(String::as_str) == Some(GRANT_AUTHORIZATION_CODE))
        .expect("a code exchange")
        .form;
    assert_eq!(form["code"], query(&ended_on, "code"));
    assert_eq!(form["redirect_uri"], "http://localhost");
    let challenge = query(&link, "code_challenge");
    assert_eq!(query(&link, "code_challenge_method"), "S256");
    let verifier = &form["code_verifier"];
    assert_eq!(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(sha2::Sha256::digest(verifier.as_bytes())),
        challenge
    );
    assert!(!link.contains(verifier.as_str()), "the verifier stays here");

    // Sealed under the password: the file does not hold the token.
    let stored = open_stored(&state_dir, USER, PASSWORD).expect("tokens saved");
    let refresh = stored.refresh_token.expect("a refresh token");
    assert!(fake.state.is_valid_refresh_token(refresh.expose_secret()));
    let text = std::fs::read_to_string(&token_file).unwrap();
    assert!(!text.contains(refresh.expose_secret()), "sealed: {text}");
    // Neither the code nor the password shows in the output.
    for secret in [query(&ended_on, "code").as_str(), PASSWORD] {
        assert!(
            !out.contains(secret) && !err.contains(secret),
            "{out}\n{err}"
        );
    }
}

#[tokio::test]
async fn another_sign_ins_answer_is_refused_and_nothing_is_stored() {
    let fake = FakeTokenServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut run = with_password(dir.path(), &account(&fake, ""), &["--paste"]);
    let (link, _) = run.link(&fake);
    let ended_on = sign_in_at(&link).await;
    let state = query(&ended_on, "state");
    let forged = ended_on.replace(&state, &format!("{}x", &state[..state.len() - 1]));
    assert_ne!(forged, ended_on);
    run.type_in(&format!("{forged}\n"));
    let token_file = run.token_file();
    let (status, _, err) = run.finish().await;
    assert!(!status.success());
    assert!(err.contains("state mismatch"), "{err}");
    assert_eq!(fake.state.requests(GRANT_AUTHORIZATION_CODE), 0);
    assert!(!token_file.exists());
}

#[tokio::test]
async fn the_providers_refusal_is_shown_escaped() {
    let fake = FakeTokenServer::start().await;
    fake.state.set_authorize_error(Some((
        "access_denied",
        "AADSTS65004: User declined\r\n\u{1b}[2Jto consent.",
    )));
    let dir = tempfile::tempdir().unwrap();
    let mut run = with_password(dir.path(), &account(&fake, ""), &["--paste"]);
    let (link, _) = run.link(&fake);
    let ended_on = sign_in_at(&link).await;
    assert!(ended_on.contains("error=access_denied"), "{ended_on}");
    run.type_in(&format!("{ended_on}\n"));
    let token_file = run.token_file();
    let (status, _, err) = run.finish().await;
    assert!(!status.success());
    assert!(
        err.contains("the provider refused the sign-in (access_denied)")
            && err.contains("AADSTS65004: User declined\\r\\n\\u{1b}[2Jto consent."),
        "{err}"
    );
    assert!(!err.contains('\u{1b}'), "{err:?}");
    assert_eq!(fake.state.requests(GRANT_AUTHORIZATION_CODE), 0);
    assert!(!token_file.exists());
}

/// What a script gets for a paste that is no answer: one try, a clear
/// reason on stderr, a non-zero exit, nothing asked of the token endpoint.
#[tokio::test]
async fn unusable_pastes_end_the_run_with_a_reason() {
    let fake = FakeTokenServer::start().await;
    let long = format!(
        "http://localhost/?state=s&code={}",
        "x".repeat(MAX_PASTE_BYTES)
    );
    let rows: &[(&str, &str)] = &[
        ("not an address\n", "is not an address"),
        ("\n", "nothing was pasted"),
        (
            "http://evil.example/?code=c&state=s\n",
            "goes to http://evil.example/, not to this sign-in's redirect address http://localhost/",
        ),
        ("http://localhost/?state=s\n", "carries no code"),
        (
            "http://localhost/?code=c&code=d&state=s\n",
            "`code` more than once",
        ),
        // The input ends before an address comes.
        ("", "ended before the address"),
        // A line past the cap, with no end in sight.
        (long.as_str(), "longer than 16384 bytes"),
        ("\u{fffd}\u{0}\u{1b}\n", "is not an address"),
    ];
    for (paste, says) in rows {
        let dir = tempfile::tempdir().unwrap();
        let mut run = with_password(dir.path(), &account(&fake, ""), &["--paste"]);
        run.link(&fake);
        run.type_in(paste);
        if paste.len() > MAX_PASTE_BYTES {
            // More than it will ever read; the pipe stays open meanwhile.
            run.type_in(&"y".repeat(4 * MAX_PASTE_BYTES));
        }
        let token_file = run.token_file();
        let (status, _, err) = run.finish().await;
        assert!(!status.success(), "{paste:?}");
        assert!(err.contains(says), "{paste:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!err.contains(PASSWORD), "{err}");
        assert!(!token_file.exists(), "{paste:?}");
    }
    assert_eq!(fake.state.requests(GRANT_AUTHORIZATION_CODE), 0);
}

#[tokio::test]
async fn an_unattended_account_takes_no_password_line() {
    let fake = FakeTokenServer::start().await;
    let phc = xoauth2_proxy::auth::password::hash_password(b"scanner pw").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let hashed = account(&fake, &format!("password_hash = \"{phc}\""));
    let run = start(dir.path(), &hashed, &["--paste", "--password-stdin"]);
    let (status, _, err) = run.finish().await;
    assert!(!status.success());
    assert!(
        err.contains("has password_hash") && err.contains("--password-stdin"),
        "{err}"
    );
    assert_eq!(fake.state.authorize_requests(), 0);
    // Without the flag, the address is the only line; tokens kept owner-only, unsealed.
    let mut run = start(dir.path(), &hashed, &["--paste"]);
    let (link, _) = run.link(&fake);
    let ended_on = sign_in_at(&link).await;
    run.type_in(&format!("{ended_on}\n"));
    let state = run.state.clone();
    let (status, _, err) = run.finish().await;
    assert!(status.success(), "{err}");
    assert!(TokenStore::new(&state).load(USER).unwrap().is_some());
    // And the flags that contradict each other are refused by the parser.
    let run = start(dir.path(), &hashed, &["--paste", "--device"]);
    let (status, _, err) = run.finish().await;
    assert!(
        !status.success() && err.contains("cannot be used with"),
        "{err}"
    );
    let run = start(dir.path(), &hashed, &["--paste", "--browser"]);
    let (status, _, err) = run.finish().await;
    assert!(
        !status.success() && err.contains("cannot be used with"),
        "{err}"
    );
}

/// An account's own https redirect URI (a page that shows the answer, like
/// Microsoft's nativeclient): `auto` takes the paste, and the exchange
/// names that URI.
#[tokio::test]
async fn an_https_redirect_uri_is_pasted_back() {
    let fake = FakeTokenServer::start().await;
    let native = "https://login.example.test/common/oauth2/nativeclient";
    let dir = tempfile::tempdir().unwrap();
    let mut run = with_password(
        dir.path(),
        &account(&fake, &format!("redirect_uri = \"{native}\"")),
        &[],
    );
    let (link, before) = run.link(&fake);
    assert!(
        before
            .iter()
            .any(|l| l.contains("redirect_uri is not on this machine")),
        "{before:?}"
    );
    assert_eq!(query(&link, "redirect_uri"), native);
    let ended_on = sign_in_at(&link).await;
    assert!(
        ended_on.starts_with(&format!("{native}?code=")),
        "{ended_on}"
    );
    // A person at a terminal pastes what the address bar shows, with a space or two.
    run.type_in(&format!("  {ended_on}  \r\n"));
    let state = run.state.clone();
    let (status, _, err) = run.finish().await;
    assert!(status.success(), "{err}");
    assert_eq!(fake.state.last_form().unwrap()["redirect_uri"], native);
    assert!(open_stored(&state, USER, PASSWORD).is_some());

    // The browser on this machine cannot take that answer: a clear refusal.
    let dir = tempfile::tempdir().unwrap();
    let run = with_password(
        dir.path(),
        &account(&fake, &format!("redirect_uri = \"{native}\"")),
        &["--browser", "--no-open"],
    );
    let (status, _, err) = run.finish().await;
    assert!(!status.success());
    assert!(
        err.contains("not on this machine") && err.contains("--paste"),
        "{err}"
    );
}

/// The browser on this machine listens where the account's loopback
/// `redirect_uri` says (host and path; a free port when it names none).
#[tokio::test]
async fn the_browser_sign_in_listens_at_the_configured_redirect_uri() {
    let fake = FakeTokenServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let run = with_password(
        dir.path(),
        &account(&fake, "redirect_uri = \"http://127.0.0.1/signed-in\""),
        &["--browser", "--no-open"],
    );
    let (link, _) = run.link(&fake);
    let redirect = query(&link, "redirect_uri");
    assert!(
        redirect.starts_with("http://127.0.0.1:") && redirect.ends_with("/signed-in"),
        "{redirect}"
    );
    let ended_on = sign_in_at(&link).await;
    let client = reqwest::Client::new();
    // Another path on that port is not the answer.
    let elsewhere = ended_on.replace("/signed-in", "/callback");
    let page = client.get(&elsewhere).send().await.unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::NOT_FOUND);
    let page = client.get(&ended_on).send().await.unwrap();
    let body = page.text().await.unwrap();
    assert!(body.contains("Signed in"), "{body}");
    let state = run.state.clone();
    let (status, _, err) = run.finish().await;
    assert!(status.success(), "{err}");
    assert_eq!(fake.state.last_form().unwrap()["redirect_uri"], redirect);
    assert!(open_stored(&state, USER, PASSWORD).is_some());
}

/// A person at a terminal, scripted: each paste is a line, or `None` for
/// "the address the browser ended on" (the fake's answer to the link).
struct Person {
    link: Option<String>,
    pastes: std::collections::VecDeque<Option<&'static str>>,
    refusals: Vec<String>,
    at_terminal: bool,
}

impl xoauth2_proxy::auth::paste::PastePrompt for Person {
    fn show(&mut self, url: &str, redirect_uri: &str) {
        assert_eq!(redirect_uri, "http://localhost");
        self.link = Some(url.to_owned());
    }

    fn read(
        &mut self,
    ) -> impl std::future::Future<
        Output = Result<zeroize::Zeroizing<String>, xoauth2_proxy::auth::paste::PasteError>,
    > + Send {
        let next = self.pastes.pop_front();
        let link = self.link.clone().expect("the link came first");
        async move {
            match next {
                Some(Some(line)) => Ok(zeroize::Zeroizing::new(line.to_owned())),
                Some(None) => Ok(zeroize::Zeroizing::new(sign_in_at(&link).await)),
                // Nothing more to paste: the person walked away.
                None => std::future::pending().await,
            }
        }
    }

    fn refused(&mut self, why: &xoauth2_proxy::auth::paste::PasteError, _left: usize) -> bool {
        self.refusals.push(why.to_string());
        self.at_terminal
    }
}

fn person(at_terminal: bool, pastes: &[Option<&'static str>]) -> Person {
    Person {
        link: None,
        pastes: pastes.iter().copied().collect(),
        refusals: Vec::new(),
        at_terminal,
    }
}

fn library_account(fake: &FakeTokenServer) -> xoauth2_proxy::config::AccountConfig {
    toml::from_str(&account(fake, "flow = \"paste\"")).unwrap()
}

fn http() -> xoauth2_proxy::auth::http::HttpClient {
    let config = xoauth2_proxy::config::Config::parse("", Path::new("empty.toml")).unwrap();
    xoauth2_proxy::http_client(&config).unwrap()
}

/// At a terminal a mistaken paste is asked again, up to
/// `MAX_PASTE_ATTEMPTS` pastes in all; a script gets one.
#[tokio::test]
async fn a_person_at_a_terminal_may_paste_again() {
    use xoauth2_proxy::auth::flows::FlowError;
    use xoauth2_proxy::auth::paste::{MAX_PASTE_ATTEMPTS, paste_sign_in};
    let fake = FakeTokenServer::start().await;
    let a = library_account(&fake);
    let mut p = person(true, &[Some("the code, not the address"), Some(""), None]);
    let tokens = paste_sign_in(&a, &http(), &mut p).await.expect("signed in");
    assert!(tokens.refresh_token.is_some());
    assert_eq!(p.refusals.len(), 2, "{:?}", p.refusals);
    assert!(p.refusals[0].contains("not an address"), "{:?}", p.refusals);

    let mut p = person(true, &[Some("x"); MAX_PASTE_ATTEMPTS]);
    let err = paste_sign_in(&a, &http(), &mut p).await.unwrap_err();
    assert!(matches!(err, FlowError::Paste(_)), "{err}");
    assert_eq!(p.refusals.len(), MAX_PASTE_ATTEMPTS - 1);

    let mut p = person(false, &[Some("x"), None]);
    let err = paste_sign_in(&a, &http(), &mut p).await.unwrap_err();
    assert!(err.to_string().contains("not an address"), "{err}");
    assert_eq!(p.refusals.len(), 1);
    assert_eq!(fake.state.codes_redeemed(), 1);
}

/// Nobody pastes: the sign-in gives up when its code would have expired.
#[tokio::test(start_paused = true)]
async fn a_paste_that_never_comes_times_out() {
    use xoauth2_proxy::auth::flows::FlowError;
    let config = xoauth2_proxy::config::Config::parse(
        &format!(
            "[[account]]\nusername = \"{USER}\"\nprovider = \"office365\"\nclient_id = \"c\"\n"
        ),
        Path::new("t.toml"),
    )
    .unwrap();
    let mut p = person(true, &[]);
    p.link = Some(String::new());
    let err = xoauth2_proxy::auth::paste::paste_sign_in(&config.accounts[0], &http(), &mut p)
        .await
        .unwrap_err();
    assert!(matches!(err, FlowError::TimedOut(_)), "{err}");
}
