//! The upstream-side helpers (`server.rs`): capability rewrite, greetings,
//! server lines, retagging.

use super::*;

#[test]
fn rewriting_capabilities() {
    let office365 = strings(
        "IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+",
    );
    let dovecot = strings(
        "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ LOGINDISABLED AUTH=XOAUTH2 AUTH=OAUTHBEARER",
    );
    let cases: Vec<(Vec<String>, bool, &str)> = vec![
        (
            office365.clone(),
            false,
            "IMAP4rev1 IMAP4 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+ AUTH=PLAIN AUTH=LOGIN",
        ),
        (
            office365,
            true,
            "IMAP4rev1 IMAP4 SASL-IR UIDPLUS ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+ AUTH=PLAIN AUTH=LOGIN STARTTLS",
        ),
        (
            dovecot,
            false,
            "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN",
        ),
        (vec![], false, "IMAP4rev1 AUTH=PLAIN AUTH=LOGIN"),
        (
            strings(
                "IDLE imap4rev1 auth=plain StartTLS logindisabled idle Idle IMAP4rev2 AUTH=NTLM",
            ),
            true,
            "IMAP4rev1 IDLE IMAP4rev2 AUTH=PLAIN AUTH=LOGIN STARTTLS",
        ),
        (
            vec![
                "".into(),
                "A B".into(),
                "X]".into(),
                "Y\r\n".into(),
                "Z(".into(),
                "ÜBER".into(),
                "OK".into(),
            ],
            false,
            "IMAP4rev1 OK AUTH=PLAIN AUTH=LOGIN",
        ),
    ];
    for (upstream, starttls, expected) in cases {
        assert_eq!(
            rewrite_capabilities(&upstream, starttls).join(" "),
            expected,
            "{upstream:?}"
        );
    }
}

#[test]
fn greetings() {
    let dovecot = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ LOGINDISABLED AUTH=XOAUTH2 AUTH=OAUTHBEARER] Dovecot (Debian) ready.\r\n";
    let upstream = capabilities_in(dovecot).unwrap();
    assert_eq!(
        upstream.join(" "),
        "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ LOGINDISABLED AUTH=XOAUTH2 AUTH=OAUTHBEARER"
    );
    let rewritten = rewrite_capabilities(&upstream, false);
    assert_eq!(
        text(&rewrite_greeting(dovecot, &rewritten)),
        "* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN AUTH=LOGIN] Dovecot (Debian) ready.\r\n"
    );
    let short = strings("IMAP4rev1 AUTH=PLAIN");
    let cases: &[(&[u8], &str)] = &[
        (
            b"* OK The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADAA]",
            "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] The Microsoft Exchange IMAP4 service is ready. [TQBOADIAUABSADAA]\r\n",
        ),
        (
            b"* OK ready\r\n",
            "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n",
        ),
        (
            b"* OK ready\n",
            "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n",
        ),
        (b"* OK\r\n", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN]\r\n"),
        (b"* OK [ALERT] hi\r\n", "* OK [ALERT] hi\r\n"),
        (b"* BYE going away\r\n", "* BYE going away\r\n"),
        (
            b"* ok [capability IMAP4rev1 X] hi\r\n",
            "* ok [capability IMAP4rev1 AUTH=PLAIN] hi\r\n",
        ),
        (
            b"* OK [CAPABILITY] hi",
            "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n",
        ),
        (
            b"* PREAUTH [CAPABILITY IMAP4rev2] logged in\r\n",
            "* PREAUTH [CAPABILITY IMAP4rev1 AUTH=PLAIN] logged in\r\n",
        ),
        (
            b"* OK [CAPABILITYX Y] hi\r\n",
            "* OK [CAPABILITYX Y] hi\r\n",
        ),
        (
            b"* OK [CAPABILITY IMAP4rev1 hi\r\n",
            "* OK [CAPABILITY IMAP4rev1 hi\r\n",
        ),
        (
            b"* OK hi [CAPABILITY IMAP4rev1]\r\n",
            "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi [CAPABILITY IMAP4rev1]\r\n",
        ),
        (b"", "\r\n"),
    ];
    for (line, expected) in cases {
        assert_eq!(
            text(&rewrite_greeting(line, &short)),
            *expected,
            "{}",
            text(line)
        );
    }
}

#[test]
fn capabilities_in_lines() {
    let cases: &[(&[u8], Option<&str>)] = &[
        (
            b"* CAPABILITY IMAP4rev1 IDLE AUTH=XOAUTH2\r\n",
            Some("IMAP4rev1 IDLE AUTH=XOAUTH2"),
        ),
        (b"* capability IMAP4rev1  IDLE", Some("IMAP4rev1 IDLE")),
        (b"* CAPABILITY\r\n", Some("")),
        (
            b"* OK [CAPABILITY IMAP4rev1 LITERAL+] ready\r\n",
            Some("IMAP4rev1 LITERAL+"),
        ),
        (
            b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n",
            Some("IMAP4rev1"),
        ),
        (
            b"A1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
            Some("IMAP4rev1 IDLE"),
        ),
        (b"A1 NO [CAPABILITY X] no\r\n", Some("X")),
        (b"* OK ready\r\n", None),
        (b"* CAPABILITYX\r\n", None),
        (b"* OK [CAPABILITYX] y\r\n", None),
        (b"* OK [CAPABILITY X\r\n", None),
        (b"A1 OK done [CAPABILITY X]\r\n", None),
        (b"+ [CAPABILITY X]\r\n", None),
        (b"* FOO [CAPABILITY X]\r\n", None),
        (b"", None),
        (b"*", None),
    ];
    for (line, expected) in cases {
        assert_eq!(
            capabilities_in(line).map(|c| c.join(" ")).as_deref(),
            *expected,
            "{}",
            text(line)
        );
    }
}

#[test]
fn server_lines() {
    use ServerLine::*;
    let cases: &[(&[u8], Option<ServerLine<'_>>)] = &[
        (
            b"A1 OK AUTHENTICATE completed.\r\n",
            Some(Tagged {
                tag: b"A1",
                status: Status::Ok,
                text: b"AUTHENTICATE completed.",
            }),
        ),
        (
            b"a1 ok [CAPABILITY IMAP4rev1] done",
            Some(Tagged {
                tag: b"a1",
                status: Status::Ok,
                text: b"[CAPABILITY IMAP4rev1] done",
            }),
        ),
        (
            b"A1 NO AUTHENTICATE failed.\r\n",
            Some(Tagged {
                tag: b"A1",
                status: Status::No,
                text: b"AUTHENTICATE failed.",
            }),
        ),
        (
            b"A1 BAD User is authenticated but not connected.\n",
            Some(Tagged {
                tag: b"A1",
                status: Status::Bad,
                text: b"User is authenticated but not connected.",
            }),
        ),
        (
            b"A1 OK\r\n",
            Some(Tagged {
                tag: b"A1",
                status: Status::Ok,
                text: b"",
            }),
        ),
        (
            b"x]y PREAUTH hi",
            Some(Tagged {
                tag: b"x]y",
                status: Status::PreAuth,
                text: b"hi",
            }),
        ),
        (
            b"* BYE Connection closed\r\n",
            Some(Untagged(b"BYE Connection closed")),
        ),
        (
            b"* OK The Microsoft Exchange IMAP4 service is ready.\r\n",
            Some(Untagged(
                b"OK The Microsoft Exchange IMAP4 service is ready.",
            )),
        ),
        (b"+ \r\n", Some(Continuation(b""))),
        (b"+\r\n", Some(Continuation(b""))),
        (
            b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n",
            Some(Continuation(b"eyJzdGF0dXMiOiI0MDEifQ==")),
        ),
        (b"+eyJ9\r\n", Some(Continuation(b"eyJ9"))),
        (b"A1 MAYBE x\r\n", None),
        (b"A1\r\n", None),
        (b"A1  OK x\r\n", None),
        (b"(A OK x\r\n", None),
        (b"*\r\n", None),
        (b"*BYE\r\n", None),
        (b"", None),
        (b"\r\n", None),
    ];
    for (line, expected) in cases {
        assert_eq!(parse_server_line(line), *expected, "{}", text(line));
    }
}

#[test]
fn retagging() {
    let cases: &[(&[u8], &str, &[u8])] = &[
        (
            b"U7 OK [CAPABILITY IMAP4rev1 IDLE] AUTHENTICATE completed.\r\n",
            "A1",
            b"A1 OK [CAPABILITY IMAP4rev1 IDLE] AUTHENTICATE completed.\r\n",
        ),
        (
            b"U7 NO AUTHENTICATE failed.\r\n",
            "a.b",
            b"a.b NO AUTHENTICATE failed.\r\n",
        ),
        (b"U7 bad \xff\xfe text\n", "T", b"T bad \xff\xfe text\n"),
        (b"LONGERTAG OK x", "A", b"A OK x"),
        (b"* BYE bye\r\n", "A1", b"* BYE bye\r\n"),
        (b"+ \r\n", "A1", b"+ \r\n"),
        (b"garbage\r\n", "A1", b"garbage\r\n"),
    ];
    for (line, tag, expected) in cases {
        assert_eq!(retag(line, tag), *expected, "{}", text(line));
    }
}

#[test]
fn before_tls_where_passwords_need_it_no_mechanism_is_offered() {
    let after_tls = rewrite_capabilities(&strings("IMAP4rev1 SASL-IR ID AUTH=XOAUTH2"), true);
    assert_eq!(
        after_tls.join(" "),
        "IMAP4rev1 SASL-IR ID AUTH=PLAIN AUTH=LOGIN STARTTLS"
    );
    let before = without_logins(&after_tls);
    assert_eq!(
        before.join(" "),
        "IMAP4rev1 SASL-IR ID STARTTLS LOGINDISABLED"
    );
    // Idempotent, whatever the case of the names.
    let again = without_logins(&strings("auth=plain LoginDisabled IDLE"));
    assert_eq!(again.join(" "), "IDLE LOGINDISABLED");
}
