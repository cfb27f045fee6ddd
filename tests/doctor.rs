//! `xoauth2-proxy doctor` against the fakes: everything fine, then each
//! kind of problem reported with what to do, and a failing exit status.

mod harness;
mod support;

use std::path::Path;

use harness::{config_text, dead_addr, imap, seed_tokens};
use support::*;
use xoauth2_proxy::config::Config;
use xoauth2_proxy::doctor::{Finding, check};

fn problems(findings: &[Finding]) -> Vec<String> {
    findings
        .iter()
        .filter_map(|f| match f {
            Finding::Problem(m) => Some(m.clone()),
            Finding::Ok(_) => None,
        })
        .collect()
}

/// A state folder as the proxy leaves it, owner-only (tempfile makes it
/// 0755, which doctor reports): these tests are about other problems.
fn private_state_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod");
    }
    dir
}

#[tokio::test]
async fn a_working_setup_has_no_problems() {
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
    );
    let config = Config::parse(&text, Path::new("test.toml")).expect("valid");
    let findings = check(&config, |_| {}).await;
    assert_eq!(problems(&findings), Vec::<String>::new(), "{findings:?}");
    let lines: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    assert!(
        lines.iter().any(|l| l.contains("greeting fine")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("token endpoint") && l.contains("answers")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("sealed with the local password chosen at sign-in")),
        "{lines:?}"
    );
    // Nothing but a GET reached the token endpoint: no grant was tried.
    assert_eq!(tokens.state.requests("refresh_token"), 0);
}

#[tokio::test]
async fn each_problem_is_reported_with_what_to_do_and_the_exit_fails() {
    let pki = TestPki::new();
    let state_dir = private_state_dir();
    let upstream = dead_addr().await;
    let token_base = format!("http://{}", dead_addr().await);
    // Not signed in: nothing seeded.
    let text = config_text(&pki, state_dir.path(), &token_base, &[imap(upstream)], "");
    let config = Config::parse(&text, Path::new("test.toml")).expect("valid");
    let found = problems(&check(&config, |_| {}).await);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].contains("upstream_tls") && found[0].contains("reachable"),
        "{}",
        found[0]
    );
    assert!(
        found[1].contains("cannot reach the token endpoint"),
        "{}",
        found[1]
    );
    assert!(
        found[2].contains(&format!("xoauth2-proxy authorize {USER}")),
        "{}",
        found[2]
    );

    let file = state_dir.path().join("proxy.toml");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(&file)
        .arg("doctor")
        .output()
        .expect("run doctor");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PROBLEM:")).count(),
        3,
        "{stdout}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("3 problem(s) found"));
}

#[tokio::test]
async fn app_only_and_catch_all_accounts_are_checked_for_what_they_are() {
    let pki = TestPki::new();
    let tokens = FakeTokenServer::start().await;
    let server = FakeImapServer::start(&pki, tokens.state.clone(), ImapOpts::default()).await;
    let state_dir = private_state_dir();
    tokens.state.set_expected_client_secret(Some("app-s3cret"));
    let phc = xoauth2_proxy::auth::password::hash_password(b"relay-pw").unwrap();
    let mut text = config_text(
        &pki,
        state_dir.path(),
        &tokens.url(),
        &[imap(server.addr)],
        "",
    );
    text.push_str(&format!(
        "flow = \"client_credentials\"\nclient_secret = \"app-s3cret\"\npassword_hash = \"{phc}\"\n"
    ));
    let catch_all = format!(
        "\n[[account]]\nusername = \"@example.org\"\nprovider = \"custom\"\nclient_id = \"c\"\n\
         token_url = \"{}/token\"\nscopes = [\"x\"]\n",
        tokens.url()
    );
    text.push_str(&catch_all);
    let config = Config::parse(&text, Path::new("test.toml")).expect("valid");
    let findings = check(&config, |_| {}).await;
    assert_eq!(problems(&findings), Vec::<String>::new(), "{findings:?}");
    let lines: Vec<String> = findings.iter().map(|f| f.to_string()).collect();
    assert!(lines.iter().any(|l| l.contains("app-only")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("catch-all")), "{lines:?}");
    assert_eq!(tokens.state.requests("client_credentials"), 1);

    // A rotated secret: a problem that names the settings, not the secret.
    tokens.state.set_expected_client_secret(Some("rotated"));
    let found = problems(&check(&config, |_| {}).await);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].contains("client_secret") && !found[0].contains("app-s3cret"),
        "{}",
        found[0]
    );
}
