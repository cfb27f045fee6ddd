//! Table tests of the schema, the typed values and the rules per section.

use super::values::parse_network;
use super::*;

const GOOD: &str = r#"
[proxy]
state_dir = "/tmp/x"

[[listener]]
protocol = "imap"
listen = "127.0.0.1:1143"
upstream = "outlook.office365.com:993"
upstream_tls = "implicit"

[[account]]
username = "alice@contoso.com"
provider = "office365"
tenant = "contoso.onmicrosoft.com"
client_id = "00000000-0000-0000-0000-000000000000"
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("proxy.toml"))
}

#[test]
fn networks_parse_strictly_and_match_mapped_addresses() {
    let lan = parse_network("192.168.1.0/24").unwrap();
    let one = parse_network(" 10.0.0.7 ").unwrap();
    let v6 = parse_network("fd00::/8").unwrap();
    assert_eq!(one.to_string(), "10.0.0.7/32");
    assert!(
        parse_network("192.168.1.1/24")
            .unwrap_err()
            .contains("192.168.1.0/24")
    );
    assert!(parse_network("192.168.1.0/33").is_err());
    assert!(parse_network("lan").is_err());
    let nets = [lan, one, v6];
    for (peer, allowed) in [
        ("192.168.1.77", true),
        ("::ffff:192.168.1.77", true),
        ("192.168.2.1", false),
        ("10.0.0.7", true),
        ("10.0.0.8", false),
        ("fd12::1", true),
        ("fe80::1", false),
    ] {
        let ip: IpAddr = peer.parse().unwrap();
        assert_eq!(is_allowed(&nets, ip), allowed, "{peer}");
    }
}

#[test]
fn exposure_follows_the_address_and_allow_from() {
    let lan = GOOD.replace("127.0.0.1:1143", "192.168.1.10:1143").replace(
        "upstream_tls = \"implicit\"",
        "upstream_tls = \"implicit\"\nallow_from = [\"192.168.1.0/24\"]\nlocal_tls = \"starttls\"",
    );
    let l = &parse(&lan).unwrap().listeners[0];
    assert!(l.is_exposed());
    assert!(!l.accepts_password(false));
    assert!(l.accepts_password(true));
    let local = &parse(GOOD).unwrap().listeners[0];
    assert!(!local.is_exposed());
    assert!(local.accepts_password(false));
    let c = parse(GOOD).unwrap();
    assert_eq!(
        c.proxy.max_connections_per_source,
        DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    );
    assert!(!c.uses_local_tls());
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.listeners[0].protocol, Protocol::Imap);
    assert_eq!(c.listeners[0].local_tls, LocalTls::None);
    assert_eq!(
        c.listeners[0].upstream_host_port(),
        Some(("outlook.office365.com", 993))
    );
    assert_eq!(c.accounts[0].flow, Flow::Auto);
    assert_eq!(c.proxy.preauth_timeout_secs, DEFAULT_PREAUTH_TIMEOUT_SECS);
    assert!(c.account("ALICE@contoso.com").is_some());
    assert_eq!(c.accounts[0].upstream_user(), "alice@contoso.com");
    let shared = GOOD.replace("tenant =", "mailbox = \"info@contoso.com\"\ntenant =");
    let c = parse(&shared).unwrap();
    assert_eq!(c.accounts[0].upstream_user(), "info@contoso.com");
    assert_eq!(c.accounts[0].username, "alice@contoso.com");
}

#[test]
fn bad_configs_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("protocol = \"imap\"", "protocol = \"imapx\"", "imapx"),
        (
            "upstream = \"outlook.office365.com:993\"",
            "upstream = \"outlook.office365.com\"",
            "listener[0].upstream",
        ),
        (
            "listen = \"127.0.0.1:1143\"",
            "listen = \"localhost:1143\"",
            "listen",
        ),
        (
            "upstream_tls = \"implicit\"",
            "upstream_tls = \"ssl\"",
            "upstream_tls",
        ),
        (
            "username = \"alice@contoso.com\"",
            "username = \"alice\"",
            "account[0].username",
        ),
        (
            "client_id = \"00000000-0000-0000-0000-000000000000\"",
            "client_id = \" \"",
            "account[0].client_id",
        ),
        (
            "provider = \"office365\"",
            "provider = \"custom\"",
            "account[0].token_url",
        ),
        ("[proxy]", "[proxy]\nbogus = 1", "bogus"),
        (
            "tenant = \"contoso.onmicrosoft.com\"",
            "tenant = 5",
            "tenant",
        ),
        (
            "state_dir = \"/tmp/x\"",
            "state_dir = \"/tmp/x\"\npreauth_timeout_secs = 0",
            "preauth_timeout_secs",
        ),
        (
            "state_dir = \"/tmp/x\"",
            "ca_file = \"/nonexistent/ca.pem\"",
            "proxy.ca_file",
        ),
        (
            "tenant = \"contoso.onmicrosoft.com\"",
            "password_hash = \"hunter2\"",
            "account[0].password_hash",
        ),
        (
            "tenant = \"contoso.onmicrosoft.com\"",
            "mailbox = \"shared mailbox\"",
            "account[0].mailbox",
        ),
        (
            "tenant = \"contoso.onmicrosoft.com\"",
            "mailbox = \"<info@contoso.com>\"",
            "account[0].mailbox",
        ),
        (
            "tenant = \"contoso.onmicrosoft.com\"",
            "password_hash = \"$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo\"",
            "account[0].password_hash",
        ),
    ];
    for (from, to, needle) in cases {
        let text = GOOD.replace(from, to);
        assert_ne!(text, GOOD, "case {to} did not apply");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains(needle),
            "`{to}`: message `{err}` does not name `{needle}`"
        );
        assert!(err.starts_with("proxy.toml"), "{err}");
    }
}

#[test]
fn catch_all_accounts_cover_their_domain_only() {
    let text = format!(
        "{GOOD}\n[[account]]\nusername = \"@Contoso.com\"\nprovider = \"office365\"\nclient_id = \"y\"\n"
    );
    let c = parse(&text).unwrap();
    // An account of its own wins over the catch-all.
    let alice = c.account("ALICE@contoso.com").unwrap();
    assert!(matches!(alice, Cow::Borrowed(_)));
    assert_eq!(alice.client_id, "00000000-0000-0000-0000-000000000000");
    let table: &[(&str, Option<&str>)] = &[
        ("bob@contoso.com", Some("bob@contoso.com")),
        ("Bob@CONTOSO.COM", Some("Bob@CONTOSO.COM")),
        ("bob@contoso.co", None),
        ("bob@contoso.com.evil.example", None),
        ("bob@sub.contoso.com", None),
        ("bob@evilcontoso.com", None),
        ("@contoso.com", None),
        ("contoso.com", None),
        ("a@b@contoso.com", None),
        ("bob <x>@contoso.com", None),
        ("", None),
    ];
    for (address, want) in table {
        let got = c.account(address);
        assert_eq!(
            got.as_ref().map(|a| a.username.as_str()),
            *want,
            "{address}"
        );
        if let Some(a) = got {
            assert_eq!(a.client_id, "y", "{address}");
        }
    }
}

#[test]
fn bad_catch_alls_and_admin_addresses_name_the_key() {
    let catch_all = |user: &str, extra: &str| {
        format!(
            "{GOOD}\n[[account]]\nusername = \"{user}\"\nprovider = \"office365\"\nclient_id = \"y\"\n{extra}"
        )
    };
    for (text, want) in [
        (catch_all("@", ""), "account[1].username"),
        (catch_all("@ contoso.com", ""), "account[1].username"),
        (catch_all("@a@contoso.com", ""), "account[1].username"),
        (
            catch_all("@contoso.com", "mailbox = \"shared@contoso.com\"\n"),
            "account[1].mailbox",
        ),
        (
            GOOD.replace("state_dir", "admin_listen = \"0.0.0.0:8089\"\nstate_dir"),
            "proxy.admin_listen",
        ),
    ] {
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
    }
    let err = parse(&GOOD.replace("state_dir", "admin_listen = \"8089\"\nstate_dir"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin_listen") && err.contains("off"), "{err}");
    let c = parse(GOOD).unwrap();
    assert_eq!(c.proxy.admin_listen, AdminListen::At(DEFAULT_ADMIN_LISTEN));
    let c = parse(&GOOD.replace("state_dir", "admin_listen = \"off\"\nstate_dir")).unwrap();
    assert_eq!(c.proxy.admin_listen, AdminListen::Off);
    let c = parse(&GOOD.replace(
        "state_dir",
        "admin_listen = \"192.168.1.5:8089\"\nadmin_allow_remote = true\nstate_dir",
    ))
    .unwrap();
    assert_eq!(
        c.proxy.admin_listen,
        AdminListen::At("192.168.1.5:8089".parse().unwrap())
    );
}

#[test]
fn duplicate_accounts_and_listeners_are_refused() {
    let twice = format!(
        "{GOOD}\n[[account]]\nusername = \"Alice@contoso.com\"\nprovider = \"office365\"\nclient_id = \"x\"\n"
    );
    assert!(
        parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("already configured")
    );
    let l = "\n[[listener]]\nprotocol = \"imap\"\nlisten = \"127.0.0.1:1143\"\nupstream = \"a:1\"\nupstream_tls = \"implicit\"\n";
    let twice = format!("{GOOD}{l}");
    assert!(
        parse(&twice)
            .unwrap_err()
            .to_string()
            .contains("already used")
    );
}

#[test]
fn password_hash_is_checked_and_never_echoed() {
    let phc = crate::auth::password::hash_password(b"pw").unwrap();
    let text = GOOD.replace("tenant =", &format!("password_hash = \"{phc}\"\ntenant ="));
    let c = parse(&text).unwrap();
    assert!(c.accounts[0].password_hash.is_some());
    assert!(!format!("{c:?}").contains(&phc));
    let bad = GOOD.replace("tenant =", "password_hash = \"hunter2\"\ntenant =");
    let err = parse(&bad).unwrap_err().to_string();
    assert!(
        err.contains("hash-password") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn client_secret_is_not_printed_by_debug() {
    let text = GOOD.replace("tenant =", "client_secret = \"s3cr3t-value\"\ntenant =");
    let c = parse(&text).unwrap();
    assert!(!format!("{c:?}").contains("s3cr3t-value"));
}

#[test]
fn upstreams_are_host_and_port_when_read() {
    let table: &[(&str, Option<(&str, u16)>)] = &[
        (
            "outlook.office365.com:993",
            Some(("outlook.office365.com", 993)),
        ),
        ("127.0.0.1:1143", Some(("127.0.0.1", 1143))),
        ("[2001:db8::1]:993", Some(("2001:db8::1", 993))),
        ("outlook.office365.com", None),
        (":993", None),
        ("host:", None),
        ("host:99999", None),
        ("host:0", None),
        ("out look.example:993", None),
        ("host/x:993", None),
    ];
    for (text, want) in table {
        let got = HostPort::try_from(text.to_string());
        assert_eq!(
            got.as_ref().ok().map(|h| (h.host(), h.port())),
            *want,
            "{text}: {got:?}"
        );
        if let Ok(h) = got {
            assert_eq!(h.to_string(), *text);
        }
    }
}

#[test]
fn a_value_of_the_wrong_shape_names_its_key_path_and_line() {
    let text = GOOD.replace(
        "upstream = \"outlook.office365.com:993\"",
        "upstream = \"outlook.office365.com\"",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "proxy.toml: listener[0].upstream: `outlook.office365.com` is not host:port"
        ),
        "{err}"
    );
    assert!(err.ends_with("(line 8)"), "{err}");
    for (from, to, needle) in [
        (
            "client_id =",
            "token_url = \"ftp://idp.example/token\"\nclient_id =",
            "account[0].token_url: `ftp://idp.example/token` is a ftp: URL",
        ),
        (
            "client_id =",
            "authorize_url = \"not a url\"\nclient_id =",
            "account[0].authorize_url: `not a url` is not a URL",
        ),
        (
            "upstream_tls = \"implicit\"",
            "upstream_tls = \"implicit\"\nallow_from = [\"10.0.0.0/8\", \"lan\"]",
            "listener[0].allow_from[1]: `lan` is not a network",
        ),
    ] {
        let err = parse(&GOOD.replace(from, to)).unwrap_err().to_string();
        assert!(err.contains(needle), "{to}: {err}");
    }
}

#[test]
fn fixed_account_senders_are_mail_addresses() {
    let phc = crate::auth::password::hash_password(b"pw").unwrap();
    let relay = |senders: &str| {
        format!(
            "{}\n[[listener]]\nprotocol = \"smtp\"\nlisten = \"127.0.0.1:1587\"\n\
             upstream = \"smtp.office365.com:587\"\nupstream_tls = \"starttls\"\n\
             allow_from = [\"127.0.0.1\"]\nfixed_account = \"alice@contoso.com\"\n\
             allowed_senders = {senders}\n",
            GOOD.replace("tenant =", &format!("password_hash = \"{phc}\"\ntenant ="))
        )
    };
    let c = parse(&relay("[\"scanner@contoso.com\"]")).unwrap();
    let l = &c.listeners[1];
    assert_eq!(l.fixed_account.as_deref(), Some("alice@contoso.com"));
    assert!(l.allowed_senders[0].eq_ignore_ascii_case("SCANNER@contoso.com"));
    for bad in ["\"<scanner@contoso.com>\"", "\"scanner\"", "\" a@b.c\""] {
        let err = parse(&relay(&format!("[{bad}]"))).unwrap_err().to_string();
        assert!(
            err.contains("listener[1].allowed_senders[0]") && err.contains("not a mail address"),
            "{bad}: {err}"
        );
    }
    // The recipient cap: 500 by default, 1 to 1000 when set.
    assert_eq!(l.recipient_cap(), DEFAULT_MAX_RECIPIENTS);
    let capped = parse(&format!(
        "{}max_recipients = 10\n",
        relay("[\"s@contoso.com\"]")
    ))
    .unwrap();
    assert_eq!(capped.listeners[1].recipient_cap(), 10);
    for bad in ["0", "1001"] {
        let text = format!("{}max_recipients = {bad}\n", relay("[\"s@contoso.com\"]"));
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("listener[1].max_recipients") && err.contains("between 1 and 1000"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn max_recipients_needs_a_fixed_account() {
    let text = GOOD.replace(
        "protocol = \"imap\"",
        "protocol = \"imap\"\nmax_recipients = 10",
    );
    assert_ne!(text, GOOD, "GOOD has a listener");
    let err = parse(&text).unwrap_err().to_string();
    assert!(
        err.contains("max_recipients") && err.contains("only applies with fixed_account"),
        "{err}"
    );
}

#[test]
fn relative_files_are_found_beside_the_configuration() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    for name in ["client_cert.pem", "client_key.pem"] {
        std::fs::copy(fixtures.join(name), creds.join(name)).unwrap();
    }
    let absolute_ca = creds.join("client_cert.pem");
    let text = GOOD
        .replace(
            "state_dir = \"/tmp/x\"",
            &format!(
                "state_dir = \"/tmp/x\"\ncert_file = \"creds/client_cert.pem\"\n\
                 key_file = \"creds/client_key.pem\"\nca_file = {:?}",
                absolute_ca.display().to_string()
            ),
        )
        .replace(
            "tenant =",
            "client_certificate = \"creds/client_cert.pem\"\n\
             client_key = \"./creds/client_key.pem\"\ntenant =",
        );
    let file = dir.path().join("proxy.toml");
    std::fs::write(&file, text).unwrap();
    // The test's working directory is the crate, not `dir`: only a path
    // taken from the configuration's folder exists.
    assert!(!Path::new("creds/client_cert.pem").exists());
    let c = Config::load(&file).unwrap();
    assert_eq!(
        c.proxy.cert_file.as_deref(),
        Some(dir.path().join("creds/client_cert.pem").as_path())
    );
    assert_eq!(
        c.proxy.key_file.as_deref(),
        Some(dir.path().join("creds/client_key.pem").as_path())
    );
    assert_eq!(c.proxy.ca_file.as_deref(), Some(absolute_ca.as_path()));
    assert_eq!(
        c.accounts[0].client_certificate.as_deref(),
        Some(dir.path().join("creds/client_cert.pem").as_path())
    );
    assert!(c.accounts[0].client_key.as_ref().unwrap().is_file());
    // Parsed from elsewhere, the same text finds nothing.
    std::fs::rename(&file, creds.join("proxy.toml")).unwrap();
    let err = Config::load(&creds.join("proxy.toml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("proxy.cert_file"), "{err}");
}

#[test]
fn endpoints_are_https_off_loopback_and_the_page_timeout_is_bounded() {
    let with = |key: &str, url: &str| GOOD.to_owned() + &format!("{key} = \"{url}\"\n");
    for key in ["authorize_url", "token_url", "device_code_url"] {
        for url in [
            "http://login.example.com/x",
            "http://10.0.0.1/x",
            "http://[fd00::1]/x",
            "http://127.0.0.1.evil.example/x",
        ] {
            let e = parse(&with(key, url)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("account[0].{key}")) && e.contains("not https"),
                "{url}: {e}"
            );
        }
        for url in [
            "https://login.example.com/x",
            "http://127.0.0.1:9/x",
            "http://127.1.2.3/x",
            "http://LOCALHOST:9/x",
            "http://[::1]:9/x",
        ] {
            parse(&with(key, url)).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }
    let page = |secs: u64| {
        GOOD.replace(
            "state_dir = \"/tmp/x\"",
            &format!("state_dir = \"/tmp/x\"\nadmin_timeout_secs = {secs}"),
        )
    };
    assert_eq!(parse(GOOD).unwrap().proxy.admin_timeout_secs, 10);
    parse(&page(30)).unwrap();
    for bad in [0, 31] {
        let e = parse(&page(bad)).unwrap_err().to_string();
        assert!(e.contains("proxy.admin_timeout_secs"), "{e}");
    }
}

#[test]
fn graph_memory_mib_has_a_default_and_is_at_least_one() {
    let with = |mib: u64| {
        GOOD.replace(
            "state_dir = \"/tmp/x\"",
            &format!("state_dir = \"/tmp/x\"\ngraph_memory_mib = {mib}"),
        )
    };
    assert_eq!(parse(GOOD).unwrap().proxy.graph_memory_mib, 256);
    assert_eq!(parse(&with(1)).unwrap().proxy.graph_memory_mib, 1);
    let e = parse(&with(0)).unwrap_err().to_string();
    assert!(e.contains("proxy.graph_memory_mib"), "{e}");
}

#[test]
fn redirect_uris_are_loopback_http_or_https() {
    let with = |extra: &str| GOOD.to_owned() + extra + "\n";
    for ok in [
        "http://localhost",
        "http://localhost:8400/callback",
        "http://LOCALHOST/cb",
        "http://127.0.0.1:9/",
        "http://[::1]:8400/x/y",
        "https://login.microsoftonline.com/common/oauth2/nativeclient",
        "https://mail.example.com/oauth/done",
    ] {
        let c = parse(&with(&format!("redirect_uri = \"{ok}\"")))
            .unwrap_or_else(|e| panic!("{ok}: {e}"));
        assert_eq!(c.accounts[0].redirect_uri.as_deref(), Some(ok));
    }
    assert_eq!(parse(GOOD).unwrap().accounts[0].redirect_uri, None);
    for (bad, says) in [
        ("localhost:8400", "is a localhost: URL"),
        ("not a url", "is not a URL"),
        ("ftp://localhost/x", "is a ftp: URL"),
        (
            "http://mail.example.com/cb",
            "plain http to another machine",
        ),
        ("http://10.0.0.1/cb", "plain http to another machine"),
        ("http://127.0.0.2/cb", "plain http to another machine"),
        (
            "http://localhost.evil.example/cb",
            "plain http to another machine",
        ),
        ("http://user@localhost/cb", "user name"),
        ("https://a:b@example.com/cb", "user name"),
        ("http://localhost/cb?x=1", "?query"),
        ("http://localhost/cb#top", "#fragment"),
    ] {
        let e = parse(&with(&format!("redirect_uri = \"{bad}\"")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("account[0].redirect_uri") && e.contains(says),
            "{bad}: {e}"
        );
    }
    // The browser on this machine cannot take an answer sent elsewhere.
    let e = parse(&with(
        "redirect_uri = \"https://example.com/cb\"\nflow = \"authorization_code\"",
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("account[0].redirect_uri") && e.contains("flow = \"paste\""),
        "{e}"
    );
    let c = parse(&with(
        "redirect_uri = \"https://example.com/cb\"\nflow = \"paste\"",
    ))
    .unwrap();
    assert_eq!(c.accounts[0].flow, Flow::Paste);
    assert!(!c.accounts[0].redirect_on_this_machine());
    assert!(
        parse(&with("redirect_uri = \"http://[::1]/cb\""))
            .unwrap()
            .accounts[0]
            .redirect_on_this_machine()
    );
    // A custom provider's paste needs its authorize_url, as the browser does.
    let custom = GOOD.replace("provider = \"office365\"", "provider = \"custom\"")
        + "token_url = \"https://idp.example/token\"\nscopes = [\"mail\"]\nflow = \"paste\"\n";
    let e = parse(&custom.replace("tenant = \"contoso.onmicrosoft.com\"\n", ""))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("account[0].authorize_url") && e.contains("flow = \"paste\""),
        "{e}"
    );
}

#[test]
fn graph_listeners_need_no_upstream_and_take_none() {
    let graph = "protocol = \"smtp\"\nlisten = \"127.0.0.1:1587\"\nbackend = \"graph\"\n";
    let upstream = "upstream = \"outlook.office365.com:993\"\nupstream_tls = \"implicit\"\n";
    let with = |listener: &str, account: &str| {
        let text = GOOD.replace(
            &format!("protocol = \"imap\"\nlisten = \"127.0.0.1:1143\"\n{upstream}"),
            listener,
        );
        parse(&format!("{text}{account}"))
    };
    let c = with(graph, "").expect("a Graph listener without upstream");
    assert_eq!(c.listeners[0].backend, Backend::Graph);
    assert_eq!(c.listeners[0].upstream_name(), "Microsoft Graph");
    assert_eq!(c.accounts[0].graph_url(), "https://graph.microsoft.com");
    let c = with(graph, "cloud = \"usgov\"\n").unwrap();
    assert_eq!(c.accounts[0].graph_url(), "https://graph.microsoft.us");
    let c = with(graph, "graph_url = \"http://127.0.0.1:9/\"\n").unwrap();
    assert_eq!(c.accounts[0].graph_url(), "http://127.0.0.1:9");
    let cases: &[(String, &str, &str)] = &[
        (format!("{graph}{upstream}"), "", "listener[0].upstream"),
        (graph.replace("smtp", "imap"), "", "listener[0].backend"),
        (
            "protocol = \"smtp\"\nlisten = \"127.0.0.1:1587\"\n".to_owned(),
            "",
            "listener[0].upstream",
        ),
        (
            "protocol = \"smtp\"\nlisten = \"127.0.0.1:1587\"\nupstream = \"a:587\"\n".to_owned(),
            "",
            "listener[0].upstream_tls",
        ),
        (
            graph.to_owned(),
            "graph_url = \"http://graph.example\"\n",
            "account[0].graph_url",
        ),
    ];
    for (listener, account, key) in cases {
        let e = with(listener, account).expect_err(listener).to_string();
        assert!(e.contains(key), "{listener}{account}: {e}");
    }
    // Graph serves Microsoft 365 accounts only: a file with no such account
    // is refused, and so is a fixed account of another provider.
    let gmail = |text: String| {
        text.replace("provider = \"office365\"", "provider = \"gmail\"")
            .replace("tenant = \"contoso.onmicrosoft.com\"\n", "")
    };
    let only_gmail = gmail(GOOD.replace(
        &format!("protocol = \"imap\"\nlisten = \"127.0.0.1:1143\"\n{upstream}"),
        graph,
    ));
    let e = parse(&only_gmail).unwrap_err().to_string();
    assert!(
        e.contains("listener[0].backend") && e.contains("office365"),
        "{e}"
    );
    // A custom provider serves Graph only when given its graph_url.
    let custom = |extra: &str| {
        GOOD.replace(
            &format!("protocol = \"imap\"\nlisten = \"127.0.0.1:1143\"\n{upstream}"),
            graph,
        )
        .replace("provider = \"office365\"", "provider = \"custom\"")
        .replace("tenant = \"contoso.onmicrosoft.com\"\n", "")
            + "token_url = \"https://idp.example/token\"\nscopes = [\"mail\"]\n"
            + extra
    };
    let e = parse(&custom("")).unwrap_err().to_string();
    assert!(e.contains("listener[0].backend"), "{e}");
    parse(&custom("graph_url = \"https://graph.example\"\n"))
        .expect("a custom account with its own graph_url");
    let fixed = format!(
        "{graph}fixed_account = \"scanner@gmail.com\"\nallow_from = [\"192.168.1.0/24\"]\n\
         allowed_senders = [\"scanner@gmail.com\"]\n"
    );
    let text = GOOD.replace(
        &format!("protocol = \"imap\"\nlisten = \"127.0.0.1:1143\"\n{upstream}"),
        &fixed,
    ) + "\n[[account]]\nusername = \"scanner@gmail.com\"\nprovider = \"gmail\"\n\
         client_id = \"c\"\npassword_hash = \"PHC\"\n";
    let phc = crate::auth::password::hash_password(b"pw").unwrap();
    let text = text.replace("PHC", &phc);
    let e = parse(&text).unwrap_err().to_string();
    assert!(
        e.contains("listener[0].fixed_account") && e.contains("not an office365 account"),
        "{e}"
    );
}

#[test]
fn metrics_are_off_by_default_and_loopback_only_without_allow_from() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.proxy.metrics_listen, None);
    assert!(!c.proxy.metrics_account_labels);
    assert_eq!(c.proxy.log_format, LogFormat::Text);
    let with = |keys: &str| parse(&GOOD.replace("state_dir", &format!("{keys}\nstate_dir")));
    let err = with("metrics_listen = \"0.0.0.0:9187\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("proxy.metrics_allow_from"), "{err}");
    let err = with("log_format = \"xml\"").unwrap_err().to_string();
    assert!(err.contains("log_format"), "{err}");

    // Loopback listen, no allow_from: only this machine may scrape.
    let local = with("metrics_listen = \"127.0.0.1:9187\"\nlog_format = \"json\"").unwrap();
    assert_eq!(local.proxy.log_format, LogFormat::Json);
    let lan_peer: IpAddr = "192.168.1.20".parse().unwrap();
    assert!(may_scrape(
        &local.proxy.metrics_allow_from,
        "127.0.0.1".parse().unwrap()
    ));
    assert!(may_scrape(
        &local.proxy.metrics_allow_from,
        "::ffff:127.0.0.1".parse().unwrap()
    ));
    assert!(!may_scrape(&local.proxy.metrics_allow_from, lan_peer));

    // allow_from opens it to those networks, and only those.
    let open = with(
        "metrics_listen = \"0.0.0.0:9187\"\nmetrics_allow_from = [\"192.168.1.0/24\"]\n\
         metrics_account_labels = true",
    )
    .unwrap();
    assert!(open.proxy.metrics_account_labels);
    assert!(may_scrape(&open.proxy.metrics_allow_from, lan_peer));
    assert!(may_scrape(
        &open.proxy.metrics_allow_from,
        "::ffff:192.168.1.20".parse().unwrap()
    ));
    assert!(!may_scrape(
        &open.proxy.metrics_allow_from,
        "10.0.0.1".parse().unwrap()
    ));
    assert!(!may_scrape(
        &open.proxy.metrics_allow_from,
        "127.0.0.1".parse().unwrap()
    ));
}

#[test]
fn notify_command_is_an_absolute_program_and_its_arguments() {
    let with = |line: &str| parse(&GOOD.replace("[proxy]\n", &format!("[proxy]\n{line}\n")));
    let ok = with(r#"notify_command = ["/usr/local/bin/alert", "--to", "admin"]"#).unwrap();
    assert_eq!(
        ok.proxy.notify_command.as_deref(),
        Some(
            &[
                "/usr/local/bin/alert".to_owned(),
                "--to".into(),
                "admin".into()
            ][..]
        )
    );
    assert_eq!(with("").unwrap().proxy.notify_command, None);
    for (line, says) in [
        ("notify_command = []", "is empty"),
        (r#"notify_command = ["alert.sh"]"#, "absolute path"),
        (
            r#"notify_command = ["notify-send hello"]"#,
            "not a shell line",
        ),
        (r#"notify_command = "/bin/alert""#, "notify_command"),
    ] {
        let e = with(line).unwrap_err().to_string();
        assert!(
            e.contains("notify_command") && e.contains(says),
            "{line}: {e}"
        );
    }
}
