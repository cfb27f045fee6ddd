//! Rewriting of what the upstream advertises: IMAP capabilities and greeting,
//! POP3 CAPA and greeting, SMTP EHLO. Whatever the upstream sends, the
//! client gets well-formed lines that never offer XOAUTH2.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xoauth2_proxy::protocol::{imap, pop3, smtp};
use xoauth2_proxy_fuzz::{assert_lines, assert_one_line, lines};

fuzz_target!(|data: &[u8]| {
    let Some((&options, data)) = data.split_first() else {
        return;
    };
    let offer_tls = options & 1 == 1;
    let upstream = lines(data);

    let first = data.split(|&b| b == b'\n').next().unwrap_or_default();
    let names = imap::capabilities_in(first).unwrap_or_else(|| upstream.clone());
    let caps = imap::rewrite_capabilities(&names, offer_tls);
    for cap in &caps {
        assert!(
            !cap.is_empty() && !cap.contains([' ', '\r', '\n']),
            "{cap:?}"
        );
        assert!(!cap.eq_ignore_ascii_case("AUTH=XOAUTH2"));
        assert!(!cap.eq_ignore_ascii_case("LOGINDISABLED"));
    }
    assert_eq!(
        caps.iter().any(|c| c.eq_ignore_ascii_case("STARTTLS")),
        offer_tls
    );
    // The greeting is the upstream's own line (only its capability code is
    // replaced), so it is one line whenever the upstream's was.
    let greeting = imap::rewrite_greeting(first, &caps);
    assert!(greeting.ends_with(b"\r\n"));
    assert!(!greeting[..greeting.len() - 1].contains(&b'\n'));
    let retagged = imap::retag(first, "A1");
    if matches!(
        imap::parse_server_line(first),
        Some(imap::ServerLine::Tagged { .. })
    ) {
        assert!(retagged.starts_with(b"A1 "));
    }

    let capa = pop3::rewrite_capa(&upstream, offer_tls);
    for line in &capa {
        assert!(!line.is_empty() && !line.starts_with('.') && !line.contains(['\r', '\n']));
        let oauth = line
            .split([' ', '='])
            .any(|w| w.eq_ignore_ascii_case("XOAUTH2") || w.eq_ignore_ascii_case("OAUTHBEARER"));
        assert!(!oauth, "{line:?}");
    }
    assert_one_line(&pop3::greeting(first));

    let offer = smtp::EhloOffer {
        starttls: offer_tls,
        auth: options & 4 == 4,
        chunking: options & 8 == 8,
    };
    let reply = smtp::ehlo_reply(&upstream, options & 2 == 2, offer);
    assert_lines(&reply);
    assert!(smtp::parse_reply(&reply).is_ok_and(|r| r.is_some_and(|(_, n)| n == reply.len())));
});
