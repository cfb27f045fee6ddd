//! `upstream_proxy`: the mail connection and the token requests through an
//! HTTP CONNECT proxy (with Basic authentication) or a SOCKS5 proxy, the
//! exceptions of `no_proxy`, a listener's own setting, and the failures a
//! proxy causes, each named after the proxy (never with its password).

mod harness;
mod support;

use std::path::Path;

use harness::{Listener, PASSWORD, config_text, imap, seed_tokens, start};
use support::proxies::{FakeHttpProxy, FakeSocks5, HttpProxyMode};
use support::*;
use xoauth2_proxy::config::Config;
use xoauth2_proxy::doctor::{Finding, check};

/// The proxy password: it must appear in no reply, finding or error.
const PROXY_SECRET: &str = "pr0xy-s3cret";

async fn login(addr: std::net::SocketAddr) -> String {
    let mut c = TestClient::connect(addr).await;
    let greeting = c.read_line().await;
    if !greeting.starts_with(b"* OK") {
        return String::from_utf8_lossy(&greeting).into_owned();
    }
    c.send(format!("a1 LOGIN {USER} {PASSWORD}\r\n").as_bytes())
        .await;
    let lines = c.read_until_tagged("a1").await;
    String::from_utf8_lossy(lines.last().unwrap()).into_owned()
}

struct Fakes {
    pki: TestPki,
    tokens: FakeTokenServer,
    server: FakeImapServer,
    dir: tempfile::TempDir,
}

async fn fakes() -> Fakes {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    seed_tokens(dir.path(), &tokens);
    Fakes {
        pki,
        tokens,
        server,
        dir,
    }
}

impl Fakes {
    fn config(&self, proxy_extra: &str, listener_extra: &str) -> String {
        let upstream = imap(self.server.addr);
        harness::config_text_listeners(
            &self.pki,
            self.dir.path(),
            &self.tokens.url(),
            &[Listener {
                upstream: &upstream,
                listen: "127.0.0.1:0",
                extra: listener_extra,
            }],
            proxy_extra,
        )
    }

    async fn doctor(&self, text: &str) -> Vec<Finding> {
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        check(&config, |_| {}).await
    }
}

fn said(findings: &[Finding]) -> String {
    findings
        .iter()
        .map(|f| f.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test]
async fn mail_and_token_requests_go_through_an_http_proxy_with_basic_authentication() {
    let f = fakes().await;
    let proxy = FakeHttpProxy::start(
        HttpProxyMode::Forward,
        Some(&format!("tester:{PROXY_SECRET}")),
    )
    .await;
    let text = f.config(
        &format!(
            "upstream_proxy = \"http://tester:{PROXY_SECRET}@{}\"\n",
            proxy.addr
        ),
        "",
    );
    let running = start(&text).await;
    let reply = login(running.addrs[0]).await;
    assert!(reply.starts_with("a1 OK"), "{reply}");
    let asked = proxy.asked();
    let connect = format!("CONNECT {} HTTP/1.1", f.server.addr);
    let token = format!("POST {}/token HTTP/1.1", f.tokens.url());
    assert!(asked.iter().any(|a| a.line == connect), "{asked:?}");
    assert!(asked.iter().any(|a| a.line == token), "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|a| a.credentials.as_deref() == Some("Basic dGVzdGVyOnByMHh5LXMzY3JldA==")),
        "{asked:?}"
    );
    running.shutdown().await;

    // doctor names the path it tests, not the password.
    let report = said(&f.doctor(&text).await);
    let through = format!("through the proxy http://{}", proxy.addr);
    assert!(
        report.contains(&format!("→ {}: {through}", f.server.addr)),
        "{report}"
    );
    assert!(report.contains("token endpoint"), "{report}");
    assert!(!report.contains(PROXY_SECRET), "{report}");
}

#[tokio::test]
async fn mail_and_token_requests_go_through_a_socks5_proxy() {
    let f = fakes().await;
    let socks = FakeSocks5::start(Some(("tester", PROXY_SECRET))).await;
    for scheme in ["socks5", "socks5h"] {
        let text = f.config(
            &format!(
                "upstream_proxy = \"{scheme}://tester:{PROXY_SECRET}@{}\"\n",
                socks.addr
            ),
            "",
        );
        let running = start(&text).await;
        let reply = login(running.addrs[0]).await;
        assert!(reply.starts_with("a1 OK"), "{scheme}: {reply}");
        running.shutdown().await;
        seed_tokens(f.dir.path(), &f.tokens);
    }
    let asked = socks.asked();
    let mail = format!("SOCKS5 {}", f.server.addr);
    let token = format!("SOCKS5 {}", f.tokens.url().trim_start_matches("http://"));
    assert!(
        asked.iter().filter(|a| a.line == mail).count() == 2,
        "{asked:?}"
    );
    assert!(asked.iter().any(|a| a.line == token), "{asked:?}");
    assert!(
        asked
            .iter()
            .all(|a| a.credentials.as_deref() == Some("tester")),
        "{asked:?}"
    );
}

#[tokio::test]
async fn no_proxy_and_a_listeners_own_setting_go_direct() {
    let f = fakes().await;
    let proxy = FakeHttpProxy::start(HttpProxyMode::Forward, None).await;
    // Every host of the test is 127.0.0.1: an exception for it.
    let text = f.config(
        &format!(
            "upstream_proxy = \"http://{}\"\nno_proxy = [\"127.0.0.0/8\"]\n",
            proxy.addr
        ),
        "",
    );
    let running = start(&text).await;
    assert!(login(running.addrs[0]).await.starts_with("a1 OK"));
    running.shutdown().await;
    assert_eq!(proxy.asked(), vec![], "no_proxy was not honoured");

    // The listener says "none" while [proxy] names a dead proxy: the mail
    // connection goes direct (the token request still takes [proxy]'s way,
    // so the tokens must be in hand: sign in through a live one first).
    let dead = harness::dead_addr().await;
    seed_tokens(f.dir.path(), &f.tokens);
    let text = f.config(
        &format!("upstream_proxy = \"http://{}\"\n", proxy.addr),
        "upstream_proxy = \"none\"",
    );
    let running = start(&text).await;
    assert!(login(running.addrs[0]).await.starts_with("a1 OK"));
    running.shutdown().await;
    let asked = proxy.asked();
    assert!(
        asked.iter().all(|a| !a.line.starts_with("CONNECT")),
        "{asked:?}"
    );
    let text = f.config(
        &format!("upstream_proxy = \"http://{dead}\"\n"),
        "upstream_proxy = \"none\"",
    );
    let report = said(&f.doctor(&text).await);
    assert!(
        report.contains(&format!("→ {}: direct", f.server.addr)),
        "{report}"
    );
}

#[tokio::test]
async fn what_a_proxy_refuses_is_said_with_the_proxy_named() {
    let f = fakes().await;
    let cases: &[(HttpProxyMode, &str)] = &[
        (
            HttpProxyMode::Answer("HTTP/1.1 403 Forbidden\r\n\r\n"),
            "refused CONNECT to {target}: 403 Forbidden",
        ),
        (
            HttpProxyMode::Answer(
                "HTTP/1.1 407 Proxy Authentication Required\r\n\
                 Proxy-Authenticate: NTLM\r\nProxy-Authenticate: Negotiate\r\n\r\n",
            ),
            "asks for authentication to CONNECT to {target}: it offers only NTLM, Negotiate",
        ),
        (
            HttpProxyMode::Forward,
            "asks for authentication to CONNECT to {target}: it refused the user name and password",
        ),
        (
            HttpProxyMode::Silent,
            "{target} (through the proxy http://{proxy}) did not answer in time",
        ),
    ];
    for (mode, expected) in cases {
        let proxy = FakeHttpProxy::start(mode.clone(), Some("tester:other")).await;
        let text = f
            .config(
                &format!(
                    "upstream_proxy = \"http://tester:{PROXY_SECRET}@{}\"\n",
                    proxy.addr
                ),
                "",
            )
            .replace("connect_timeout_secs = 5", "connect_timeout_secs = 1");
        let expected = expected
            .replace("{target}", &f.server.addr.to_string())
            .replace("{proxy}", &proxy.addr.to_string());
        let report = said(&f.doctor(&text).await);
        assert!(report.contains(&expected), "{expected}\n{report}");
        assert!(!report.contains(PROXY_SECRET), "{report}");

        // A mail client is told the server cannot be reached, no more.
        let running = start(&text).await;
        let reply = login(running.addrs[0]).await;
        assert!(
            !reply.starts_with("a1 OK") && !reply.contains(PROXY_SECRET),
            "{reply}"
        );
        running.shutdown().await;
    }

    // A proxy that is not there.
    let dead = harness::dead_addr().await;
    let text = f.config(&format!("upstream_proxy = \"socks5://{dead}\"\n"), "");
    let report = said(&f.doctor(&text).await);
    assert!(
        report.contains(&format!("cannot connect to the proxy socks5://{dead}")),
        "{report}"
    );
}

#[test]
fn proxy_settings_are_checked_when_the_file_is_read() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: &str| {
        config_text(
            &pki,
            dir.path(),
            "http://127.0.0.1:9",
            &[imap("127.0.0.1:993".parse().unwrap())],
            extra,
        )
    };
    for good in [
        "upstream_proxy = \"system\"",
        "upstream_proxy = \"none\"",
        "upstream_proxy = \"socks5h://proxy.corp:1080\"",
        "no_proxy = [\"corp.example\", \"10.0.0.0/8\", \"*\"]",
    ] {
        Config::parse(&base(good), Path::new("t.toml")).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, said) in [
        (
            "upstream_proxy = \"https://u:hunter22@proxy:3128\"".to_owned(),
            "proxy.upstream_proxy",
        ),
        ("upstream_proxy = \"direct\"".to_owned(), "is not a proxy"),
        ("no_proxy = [\"10.0.0.1/8\"]".to_owned(), "proxy.no_proxy"),
    ] {
        let err = Config::parse(&base(&bad), Path::new("t.toml"))
            .expect_err(&bad)
            .to_string();
        assert!(
            err.contains(said) && !err.contains("hunter22"),
            "{bad}: {err}"
        );
    }
}

#[tokio::test]
async fn an_accounts_own_proxy_takes_its_token_requests() {
    let f = fakes().await;
    let proxy = FakeHttpProxy::start(HttpProxyMode::Forward, None).await;
    // [proxy] goes direct; the account's HTTP requests take its own proxy,
    // its mail connection its listener's way (direct).
    let text = f.config("upstream_proxy = \"none\"\n", "")
        + &format!("upstream_proxy = \"http://{}\"\n", proxy.addr);
    let running = start(&text).await;
    assert!(login(running.addrs[0]).await.starts_with("a1 OK"));
    running.shutdown().await;
    let asked = proxy.asked();
    let token = format!("POST {}/token HTTP/1.1", f.tokens.url());
    assert!(asked.iter().any(|a| a.line == token), "{asked:?}");
    assert!(
        asked.iter().all(|a| !a.line.starts_with("CONNECT")),
        "{asked:?}"
    );
    let report = said(&f.doctor(&text).await);
    assert!(
        report.contains(&format!("through the proxy http://{}", proxy.addr))
            && report.contains(&format!("→ {}: direct", f.server.addr)),
        "{report}"
    );
}
