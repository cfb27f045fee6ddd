//! `xoauth2-proxy init`: driven as a process through a pipe, with a fake
//! OpenID discovery server on 127.0.0.1.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

const TENANT: &str = "9188040d-6c67-4c5b-b112-36a304b66dad";
const CLIENT_ID: &str = "11111111-2222-3333-4444-555555555555";

/// Serves one openid-configuration naming [`TENANT`] to every request; returns its base URL.
fn fake_discovery() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).into_owned();
            let body = if request
                .starts_with("GET /contoso.example/v2.0/.well-known/openid-configuration ")
            {
                format!(
                    r#"{{"issuer":"https://login.microsoftonline.com/{TENANT}/v2.0","token_endpoint":"https://login.microsoftonline.com/{TENANT}/oauth2/v2.0/token"}}"#
                )
            } else {
                String::new()
            };
            let status = if body.is_empty() {
                "400 Bad Request"
            } else {
                "200 OK"
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    base
}

/// A base URL nobody listens on.
fn unreachable_base() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    base
}

fn run_init(config: &Path, discovery: &str, args: &[&str], stdin: &str) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(config)
        .arg("init")
        .args(args)
        .env("XOAUTH2_PROXY_DISCOVERY_URL", discovery)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn loads(path: &Path) -> xoauth2_proxy::config::Config {
    xoauth2_proxy::config::Config::load(path).expect("the written config loads")
}

#[cfg(unix)]
fn assert_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
}
#[cfg(not(unix))]
fn assert_owner_only(_path: &Path) {}

#[test]
fn non_interactive_writes_a_config_that_loads_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub").join("proxy.toml");
    let out = run_init(
        &path,
        &unreachable_base(),
        &[
            "--non-interactive",
            "--address",
            "ann@contoso.example",
            "--client-id",
            CLIENT_ID,
            "--tenant",
            "contoso.example",
            "--listeners",
            "imap,smtp,pop3",
        ],
        "",
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    let config = loads(&path);
    assert_owner_only(&path);
    assert_eq!(config.listeners.len(), 3);
    assert_eq!(config.accounts[0].username, "ann@contoso.example");
    assert_eq!(
        config.accounts[0].tenant.as_deref(),
        Some("contoso.example")
    );
    assert_eq!(config.accounts[0].flow, xoauth2_proxy::config::Flow::Auto);
    for line in [
        "IMAP: server 127.0.0.1, port 1143, security none, user name: your address",
        "SMTP: server 127.0.0.1, port 1587, security none",
        "POP3: server 127.0.0.1, port 1110",
    ] {
        assert!(t.contains(line), "missing {line:?} in {t}");
    }
}

#[test]
fn non_interactive_needs_its_flags() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let out = run_init(&path, &unreachable_base(), &["--non-interactive"], "");
    assert!(!out.status.success());
    assert!(text(&out).contains("--address"), "{}", text(&out));
    assert!(!path.exists());
}

#[test]
fn interactive_finds_the_tenant_by_discovery() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let out = run_init(
        &path,
        &fake_discovery(),
        &[],
        &format!("ann@contoso.example\n{CLIENT_ID}\n"),
    );
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(
        t.contains(&format!("Tenant of contoso.example: {TENANT}")),
        "{t}"
    );
    assert!(t.contains("Registering the Entra app"), "{t}");
    let config = loads(&path);
    assert_owner_only(&path);
    assert_eq!(config.accounts[0].tenant.as_deref(), Some(TENANT));
    assert_eq!(config.accounts[0].client_id, CLIENT_ID);
    // Piped, not a terminal: the service is not offered.
    assert!(!t.contains("service now"), "{t}");
}

#[test]
fn unknown_domain_and_offline_fall_back_to_organizations() {
    let dir = tempfile::tempdir().unwrap();
    for (base, said) in [
        (
            fake_discovery(),
            "No Microsoft 365 tenant was found for elsewhere.example",
        ),
        (
            unreachable_base(),
            "Could not look up the tenant of elsewhere.example",
        ),
    ] {
        let path = dir.path().join(format!("p{}.toml", said.len()));
        let out = run_init(
            &path,
            &base,
            &[],
            &format!("bob@elsewhere.example\n{CLIENT_ID}\n"),
        );
        let t = text(&out);
        assert!(out.status.success(), "{t}");
        assert!(t.contains(said), "{t}");
        assert!(t.contains("\"organizations\""), "{t}");
        assert_eq!(
            loads(&path).accounts[0].tenant.as_deref(),
            Some("organizations")
        );
    }
}

#[test]
fn refuses_to_overwrite_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, "# mine\n").unwrap();
    let args = [
        "--non-interactive",
        "--address",
        "ann@contoso.example",
        "--client-id",
        CLIENT_ID,
        "--tenant",
        "organizations",
    ];
    let out = run_init(&path, &unreachable_base(), &args, "");
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = run_init(&path, &unreachable_base(), &forced, "");
    assert!(out.status.success(), "{}", text(&out));
    loads(&path);
    assert_owner_only(&path);
}

#[test]
fn a_bad_address_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.toml");
    let out = run_init(
        &path,
        &unreachable_base(),
        &[
            "--non-interactive",
            "--address",
            "x\"y",
            "--client-id",
            CLIENT_ID,
            "--tenant",
            "t",
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(!path.exists());
}
