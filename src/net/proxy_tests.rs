use super::*;

fn server(text: &str) -> ProxyServer {
    ProxyServer::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// A proxy URL and what it says: kind, host, port, user and password.
type ProxyCase = (
    &'static str,
    ProxyKind,
    &'static str,
    u16,
    Option<(&'static str, &'static str)>,
);

#[test]
fn proxy_urls_parse_into_their_parts() {
    let cases: &[ProxyCase] = &[
        (
            "http://proxy.corp:3128",
            ProxyKind::HttpConnect,
            "proxy.corp",
            3128,
            None,
        ),
        (
            "http://10.0.0.1",
            ProxyKind::HttpConnect,
            "10.0.0.1",
            80,
            None,
        ),
        (
            "socks5://10.0.0.1",
            ProxyKind::Socks5,
            "10.0.0.1",
            1080,
            None,
        ),
        (
            "socks5h://[2001:db8::1]:1081",
            ProxyKind::Socks5h,
            "2001:db8::1",
            1081,
            None,
        ),
        (
            "http://me%40corp:p%3Ass@proxy:3128/",
            ProxyKind::HttpConnect,
            "proxy",
            3128,
            Some(("me@corp", "p:ss")),
        ),
        (
            "socks5://u:@s:1",
            ProxyKind::Socks5,
            "s",
            1,
            Some(("u", "")),
        ),
    ];
    for (text, kind, host, port, credentials) in cases {
        let p = server(text);
        assert_eq!(
            (p.kind, p.host.as_str(), p.port),
            (*kind, *host, *port),
            "{text}"
        );
        let got = p
            .credentials
            .as_ref()
            .map(|(u, pw)| (u.as_str(), pw.expose_secret()));
        assert_eq!(got, *credentials, "{text}");
    }
}

#[test]
fn only_the_environment_may_leave_out_the_scheme() {
    let p = ProxyServer::parse_lenient("proxy.corp:8080").unwrap();
    assert_eq!(p.to_string(), "http://proxy.corp:8080");
    assert!(ProxyServer::parse("proxy.corp:8080").is_err());
    assert!(ProxyServer::parse("direct").is_err());
}

#[test]
fn hostile_or_wrong_proxy_values_are_refused_without_their_password() {
    for text in [
        "https://u:hunter22@proxy:3128",
        "ftp://proxy:21",
        "http://proxy:3128/path",
        "http://proxy:3128?x=1",
        "http://:3128",
        "http://u:hunter22@proxy:0",
        "socks4://proxy:1080",
        "",
        "http://u:%ff%fe@proxy:1",
    ] {
        let err = ProxyServer::parse(text).expect_err(text);
        assert!(!err.contains("hunter22"), "{text}: {err}");
    }
}

#[test]
fn a_proxy_is_shown_without_its_credentials() {
    let p = server("http://me:hunter22@proxy.corp:3128");
    assert_eq!(p.to_string(), "http://proxy.corp:3128");
    let debug = format!("{p:?}");
    assert!(
        !debug.contains("hunter22") && !debug.contains("me:"),
        "{debug}"
    );
    let route = Route::Via(p);
    assert_eq!(
        route.to_string(),
        "through the proxy http://proxy.corp:3128"
    );
    assert_eq!(
        server("socks5h://[::1]:1080").to_string(),
        "socks5h://[::1]:1080"
    );
}

#[test]
fn no_proxy_rules_match_hosts_subdomains_and_networks() {
    let rule = |t: &str| NoProxyRule::parse(t).unwrap_or_else(|e| panic!("{t}: {e}"));
    let cases: &[(&str, &str, bool)] = &[
        ("corp.example", "corp.example", true),
        ("corp.example", "mail.corp.example", true),
        (".corp.example", "mail.corp.example", true),
        ("*.corp.example", "mail.corp.example", true),
        ("corp.example", "MAIL.Corp.Example.", true),
        ("corp.example", "evilcorp.example", false),
        ("corp.example", "corp.example.evil", false),
        ("10.0.0.0/8", "10.1.2.3", true),
        ("10.0.0.0/8", "11.1.2.3", false),
        ("10.0.0.0/8", "ten.example", false),
        ("::1", "[::1]", true),
        ("outlook.office365.com:993", "outlook.office365.com", true),
        ("*", "anything.example", true),
    ];
    for (text, host, expected) in cases {
        assert_eq!(rule(text).matches(host), *expected, "{text} vs {host}");
    }
    for bad in ["", "a b", "10.0.0.1/8", "-.-"] {
        assert!(NoProxyRule::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_policy_routes_by_setting_and_exceptions() {
    let proxy = server("http://proxy:3128");
    let policy = ProxyPolicy::new(
        ProxySetting::Server(proxy.clone()),
        vec![NoProxyRule::parse("corp.example").unwrap()],
    );
    assert_eq!(
        policy.route("outlook.office365.com"),
        Route::Via(proxy.clone())
    );
    assert_eq!(policy.route("mail.corp.example"), Route::Direct);
    // An explicit proxy is used for loopback too (a tunnel, a test rig).
    assert_eq!(policy.route("127.0.0.1"), Route::Via(proxy));
    assert_eq!(
        ProxyPolicy::direct().route("outlook.office365.com"),
        Route::Direct
    );
    let listener_own = policy.with_setting(Some(&ProxySetting::Direct));
    assert_eq!(listener_own.route("outlook.office365.com"), Route::Direct);
    assert_eq!(
        policy.route_with(Some(&ProxySetting::Direct), "outlook.office365.com"),
        Route::Direct
    );
    assert_eq!(
        policy.route_with(None, "mail.corp.example"),
        Route::Direct,
        "no_proxy holds for a listener's own setting too"
    );
    assert_eq!(policy.with_setting(None), policy);
}

#[test]
fn the_environment_names_the_system_proxy() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        SystemProxy::from_env(move |name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    };
    let s = env(&[
        ("ALL_PROXY", "socks5h://all:1080"),
        ("https_proxy", "http://lower:3128"),
        ("NO_PROXY", "corp.example, 10.0.0.0/8,,<local>, not a host"),
    ]);
    assert_eq!(s.proxy, Some(server("http://lower:3128")));
    assert_eq!(s.source, "HTTPS_PROXY");
    assert_eq!(s.no_proxy.len(), 2, "{:?}", s.no_proxy);
    assert_eq!(s.route("mail.corp.example"), Route::Direct);
    assert_eq!(s.route("10.9.9.9"), Route::Direct);
    assert_eq!(s.route("localhost"), Route::Direct);
    assert_eq!(s.route("127.0.0.1"), Route::Direct);
    assert_eq!(s.route("[::1]"), Route::Direct);
    assert_eq!(
        s.route("outlook.office365.com"),
        Route::Via(server("http://lower:3128"))
    );

    let s = env(&[("ALL_PROXY", "socks5h://all:1080")]);
    assert_eq!(s.proxy, Some(server("socks5h://all:1080")));
    let s = env(&[("HTTPS_PROXY", "gopher://x:1"), ("ALL_PROXY", "")]);
    assert_eq!(s.proxy, None);
    assert_eq!(s.route("outlook.office365.com"), Route::Direct);
    assert_eq!(env(&[]), SystemProxy::default());
}

#[test]
fn macos_settings_name_the_https_then_the_socks_proxy() {
    let https_and_socks = MacProxies {
        https_enable: true,
        https_proxy: Some("proxy.corp".into()),
        https_port: Some(3128),
        socks_enable: true,
        socks_proxy: Some("socks.corp".into()),
        socks_port: Some(1080),
        exceptions: vec![
            "*.local".into(),
            "169.254/16".into(),
            "10/8".into(),
            "corp.example".into(),
            "not a host".into(),
        ],
    };
    let s = mac_system_proxy(&https_and_socks).expect("a proxy");
    assert_eq!(s.proxy, Some(server("http://proxy.corp:3128")));
    assert_eq!(s.source, "macOS secure web proxy (HTTPS)");
    assert_eq!(s.no_proxy.len(), 4, "{:?}", s.no_proxy);
    for direct in [
        "printer.local",
        "169.254.3.4",
        "10.1.2.3",
        "mail.corp.example",
        "localhost",
    ] {
        assert_eq!(s.route(direct), Route::Direct, "{direct}");
    }
    assert_eq!(
        s.route("outlook.office365.com"),
        Route::Via(server("http://proxy.corp:3128"))
    );

    // HTTPS off (or unusable): the SOCKS proxy, names resolved by it.
    for https_off in [
        MacProxies {
            https_enable: false,
            ..https_and_socks.clone()
        },
        MacProxies {
            https_port: None,
            ..https_and_socks.clone()
        },
        MacProxies {
            https_proxy: Some("  ".into()),
            ..https_and_socks.clone()
        },
        MacProxies {
            https_port: Some(70000),
            ..https_and_socks.clone()
        },
    ] {
        let s = mac_system_proxy(&https_off).expect("the SOCKS proxy");
        assert_eq!(
            s.proxy,
            Some(server("socks5h://socks.corp:1080")),
            "{https_off:?}"
        );
        assert_eq!(s.source, "macOS SOCKS proxy");
    }

    let v6 = MacProxies {
        https_enable: true,
        https_proxy: Some("fd00::1".into()),
        https_port: Some(8080),
        ..MacProxies::default()
    };
    assert_eq!(
        mac_system_proxy(&v6).and_then(|s| s.proxy),
        Some(server("http://[fd00::1]:8080"))
    );

    // Neither on (macOS' default): none, so the proxy goes direct.
    let off = MacProxies {
        https_enable: false,
        socks_enable: false,
        ..https_and_socks
    };
    assert_eq!(mac_system_proxy(&off), None);
    assert_eq!(mac_system_proxy(&MacProxies::default()), None);
}

#[test]
fn the_connect_request_carries_basic_credentials() {
    let p = server("http://me:hunter22@proxy:3128");
    let request = String::from_utf8(connect_request(&p, "outlook.office365.com:993")).unwrap();
    let expected = format!(
        "CONNECT outlook.office365.com:993 HTTP/1.1\r\nHost: outlook.office365.com:993\r\n\
         User-Agent: xoauth2-proxy/{}\r\nProxy-Authorization: Basic bWU6aHVudGVyMjI=\r\n\r\n",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(request, expected);
    let plain = String::from_utf8(connect_request(&server("http://proxy:1"), "[::1]:993")).unwrap();
    assert!(plain.starts_with("CONNECT [::1]:993 HTTP/1.1\r\nHost: [::1]:993\r\n"));
    assert!(!plain.contains("Proxy-Authorization"));
}

#[test]
fn connect_answers_are_judged_with_the_proxy_named() {
    let with = server("http://me:hunter22@10.0.0.1:3128");
    let without = server("http://10.0.0.1:3128");
    let target = "outlook.office365.com:993";
    let judge = |head: &str, p: &ProxyServer| judge_answer(head.as_bytes(), p, target);

    assert!(judge("HTTP/1.1 200 Connection established\r\n\r\n", &without).is_ok());
    assert!(judge("HTTP/1.0 200 OK\r\nProxy-agent: x\r\n\r\n", &without).is_ok());

    let cases: &[(&str, &ProxyServer, &str)] = &[
        (
            "HTTP/1.1 403 Forbidden\r\n\r\n",
            &without,
            "the proxy http://10.0.0.1:3128 refused CONNECT to outlook.office365.com:993: 403 Forbidden",
        ),
        (
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: NTLM\r\n\
             Proxy-Authenticate: Negotiate\r\n\r\n",
            &with,
            "it offers only NTLM, Negotiate, and NTLM, Negotiate and Kerberos proxy \
             authentication are not supported",
        ),
        (
            "HTTP/1.1 407 x\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n\r\n",
            &with,
            "it refused the user name and password of upstream_proxy",
        ),
        (
            "HTTP/1.1 407 x\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n\r\n",
            &without,
            "put user:password@ before the host in upstream_proxy",
        ),
        (
            "HTTP/1.1 502 Bad Gateway\r\n\r\n",
            &without,
            "refused CONNECT to outlook.office365.com:993: 502 Bad Gateway",
        ),
        // A control character in the reason: not HTTP, and not repeated.
        (
            "HTTP/1.1 502 Bad\x1b[31m Gateway\r\n\r\n",
            &without,
            "did not answer CONNECT to outlook.office365.com:993 as an HTTP proxy does",
        ),
        (
            "SSH-2.0-OpenSSH\r\n\r\n",
            &without,
            "did not answer CONNECT",
        ),
    ];
    for (head, p, said) in cases {
        let err = judge(head, p).expect_err(head).to_string();
        assert!(err.contains(said), "{head:?}: {err}");
        assert!(!err.contains("hunter22") && !err.contains('\x1b'), "{err}");
    }
}

#[test]
fn windows_proxy_lists_and_winhttp_settings_are_read() {
    let pick = |t: &str| pick_server(t).map(|r| r.unwrap().to_string());
    assert_eq!(pick("proxy:3128").as_deref(), Some("http://proxy:3128"));
    assert_eq!(
        pick("http=a:1;https=b:2;socks=c:3").as_deref(),
        Some("http://b:2")
    );
    assert_eq!(pick("http=a:1;ftp=f:21").as_deref(), Some("http://a:1"));
    assert_eq!(pick("socks=c:1080"), None);
    assert_eq!(pick(""), None);

    let blob = |flags: u32, server: &str, bypass: &str| {
        let mut b = Vec::new();
        for w in [0x18u32, 7, flags, server.len() as u32] {
            b.extend_from_slice(&w.to_le_bytes());
        }
        b.extend_from_slice(server.as_bytes());
        b.extend_from_slice(&(bypass.len() as u32).to_le_bytes());
        b.extend_from_slice(bypass.as_bytes());
        b
    };
    assert_eq!(
        winhttp_settings(&blob(3, "proxy:8080", "<local>;*.corp")),
        Some(("proxy:8080".to_owned(), "<local>;*.corp".to_owned()))
    );
    assert_eq!(winhttp_settings(&blob(1, "", "")), None);
    // Truncated or lying lengths: nothing, never a panic.
    let mut short = blob(3, "proxy:8080", "");
    short.truncate(20);
    assert_eq!(winhttp_settings(&short), None);
    let mut lying = blob(3, "p:1", "");
    lying[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(winhttp_settings(&lying), None);
    assert_eq!(winhttp_settings(&[]), None);
    let rules = parse_list("<local>;*.corp;10.0.0.0/8", ';');
    assert_eq!(rules.len(), 2);
}
