use super::*;
use crate::protocol::test_random::{Fed, XorShift, feed_in_random_chunks, random_input};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::ExposeSecret;

/// A comparable view of an action; the password is exposed only here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum A {
    NeedMore,
    Reply(String),
    Login(String, String),
    StartTls,
    Close(String),
}

fn view(action: Action) -> A {
    match action {
        Action::NeedMore => A::NeedMore,
        Action::Reply(b) => A::Reply(String::from_utf8(b).unwrap()),
        Action::Login { credentials } => A::Login(
            credentials.username,
            credentials.password.expose_secret().to_owned(),
        ),
        Action::StartTls => A::StartTls,
        Action::Close(b) => A::Close(String::from_utf8(b).unwrap()),
    }
}

fn r(s: &str) -> A {
    A::Reply(s.to_owned())
}

fn login(u: &str, p: &str) -> A {
    A::Login(u.to_owned(), p.to_owned())
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

fn frontend(offer_stls: bool) -> Frontend {
    Frontend::new(vec!["USER".into(), "SASL PLAIN LOGIN".into()], offer_stls)
}

/// Steps until NeedMore or Close, returning every action but NeedMore.
fn run(fe: &mut Frontend, buf: &mut Vec<u8>) -> Vec<A> {
    let mut out = Vec::new();
    for _ in 0..10_000 {
        match view(fe.step(buf)) {
            A::NeedMore => return out,
            a @ A::Close(_) => {
                out.push(a);
                return out;
            }
            a => out.push(a),
        }
    }
    panic!("step did not settle");
}

fn dialogue(offer_stls: bool, input: &str) -> Vec<A> {
    run(&mut frontend(offer_stls), &mut input.as_bytes().to_vec())
}

#[test]
fn dialogue_table() {
    let plain = b64(b"\0alice@contoso.com\0pa ss");
    let user = b64(b"alice@contoso.com");
    let pass = b64(b"s3cret");
    let cases: Vec<(&str, bool, String, Vec<A>)> = vec![
        (
            "capa",
            false,
            "CAPA\r\n".into(),
            vec![r(
                "+OK Capability list follows\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n",
            )],
        ),
        (
            "user pass",
            false,
            "USER alice@contoso.com\r\nPASS s3cret\r\n".into(),
            vec![r("+OK Send PASS\r\n"), login("alice@contoso.com", "s3cret")],
        ),
        (
            "pass keeps spaces",
            false,
            "user bob\npass  two words \r\n".into(),
            vec![r("+OK Send PASS\r\n"), login("bob", " two words ")],
        ),
        (
            "empty password still logs in",
            false,
            "USER bob\r\nPASS\r\n".into(),
            vec![r("+OK Send PASS\r\n"), login("bob", "")],
        ),
        (
            "empty password after space",
            false,
            "USER bob\r\nPASS \r\n".into(),
            vec![r("+OK Send PASS\r\n"), login("bob", "")],
        ),
        (
            "pass without user",
            false,
            "PASS x\r\n".into(),
            vec![r("-ERR USER first\r\n")],
        ),
        (
            "retry needs user again",
            false,
            "USER a\r\nPASS x\r\nPASS y\r\n".into(),
            vec![
                r("+OK Send PASS\r\n"),
                login("a", "x"),
                r("-ERR USER first\r\n"),
            ],
        ),
        (
            "other command forgets user",
            false,
            "USER a\r\nSTAT\r\nPASS y\r\n".into(),
            vec![
                r("+OK Send PASS\r\n"),
                r("-ERR Log in first\r\n"),
                r("-ERR USER first\r\n"),
            ],
        ),
        (
            "user again replaces",
            false,
            "USER a\r\nUSER b\r\nPASS y\r\n".into(),
            vec![
                r("+OK Send PASS\r\n"),
                r("+OK Send PASS\r\n"),
                login("b", "y"),
            ],
        ),
        (
            "user without name",
            false,
            "USER\r\nUSER  \r\n".into(),
            vec![
                r("-ERR Missing user name\r\n"),
                r("-ERR Missing user name\r\n"),
            ],
        ),
        (
            "auth lists mechanisms",
            false,
            "AUTH\r\n".into(),
            vec![r("+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n")],
        ),
        (
            "auth plain ir",
            false,
            format!("AUTH PLAIN {plain}\r\n"),
            vec![login("alice@contoso.com", "pa ss")],
        ),
        (
            "auth plain lower case",
            false,
            format!("auth plain {plain}\r\n"),
            vec![login("alice@contoso.com", "pa ss")],
        ),
        (
            "auth plain challenge",
            false,
            format!("AUTH PLAIN\r\n{plain}\r\n"),
            vec![r("+ \r\n"), login("alice@contoso.com", "pa ss")],
        ),
        (
            "auth plain empty ir",
            false,
            "AUTH PLAIN =\r\n".into(),
            vec![r(
                "-ERR the PLAIN response must be authzid NUL authcid NUL password\r\n",
            )],
        ),
        (
            "auth plain bad base64",
            false,
            "AUTH PLAIN\r\n!!!\r\n".into(),
            vec![r("+ \r\n"), r("-ERR the response is not valid base64\r\n")],
        ),
        (
            "auth plain empty user",
            false,
            format!("AUTH PLAIN {}\r\n", b64(b"\0\0pw")),
            vec![r("-ERR the user name is empty\r\n")],
        ),
        (
            "auth plain cancelled",
            false,
            "AUTH PLAIN\r\n*\r\nCAPA\r\n".into(),
            vec![
                r("+ \r\n"),
                r("-ERR Authentication cancelled\r\n"),
                r("+OK Capability list follows\r\nUSER\r\nSASL PLAIN LOGIN\r\n.\r\n"),
            ],
        ),
        (
            "auth login",
            false,
            format!("AUTH LOGIN\r\n{user}\r\n{pass}\r\n"),
            vec![
                r("+ VXNlcm5hbWU6\r\n"),
                r("+ UGFzc3dvcmQ6\r\n"),
                login("alice@contoso.com", "s3cret"),
            ],
        ),
        (
            "auth login ir",
            false,
            format!("AUTH LOGIN {user}\r\n{pass}\r\n"),
            vec![
                r("+ UGFzc3dvcmQ6\r\n"),
                login("alice@contoso.com", "s3cret"),
            ],
        ),
        (
            "auth login empty password",
            false,
            format!("AUTH LOGIN {user}\r\n=\r\n"),
            vec![r("+ UGFzc3dvcmQ6\r\n"), login("alice@contoso.com", "")],
        ),
        (
            "auth login cancel at password",
            false,
            format!("AUTH LOGIN\r\n{user}\r\n*\r\n"),
            vec![
                r("+ VXNlcm5hbWU6\r\n"),
                r("+ UGFzc3dvcmQ6\r\n"),
                r("-ERR Authentication cancelled\r\n"),
            ],
        ),
        (
            "auth login bad user",
            false,
            "AUTH LOGIN\r\n%%%\r\n".into(),
            vec![
                r("+ VXNlcm5hbWU6\r\n"),
                r("-ERR the response is not valid base64\r\n"),
            ],
        ),
        (
            "auth login empty user",
            false,
            "AUTH LOGIN =\r\n".into(),
            vec![r("-ERR the user name is empty\r\n")],
        ),
        (
            "auth login non-utf8 password",
            false,
            format!("AUTH LOGIN {user}\r\n{}\r\n", b64(b"\xff\xfe")),
            vec![
                r("+ UGFzc3dvcmQ6\r\n"),
                r("-ERR the response is not valid UTF-8\r\n"),
            ],
        ),
        (
            "xoauth2 refused",
            false,
            "AUTH XOAUTH2\r\nAUTH NTLM\r\nAUTH OAUTHBEARER abc\r\n".into(),
            vec![
                r("-ERR Unsupported mechanism, use PLAIN or LOGIN\r\n"),
                r("-ERR Unsupported mechanism, use PLAIN or LOGIN\r\n"),
                r("-ERR Unsupported mechanism, use PLAIN or LOGIN\r\n"),
            ],
        ),
        (
            "auth extra words",
            false,
            "AUTH PLAIN a b\r\n".into(),
            vec![r("-ERR Syntax: AUTH mechanism [initial-response]\r\n")],
        ),
        (
            "apop",
            false,
            "APOP alice 0123456789abcdef\r\n".into(),
            vec![r(
                "-ERR APOP is not supported, use USER/PASS or AUTH PLAIN\r\n",
            )],
        ),
        (
            "quit",
            false,
            "QUIT\r\nCAPA\r\n".into(),
            vec![A::Close("+OK Bye\r\n".into())],
        ),
        (
            "stls not offered",
            false,
            "STLS\r\n".into(),
            vec![r("-ERR STLS not offered\r\n")],
        ),
        ("stls offered", true, "stls\r\n".into(), vec![A::StartTls]),
        (
            "stls only once",
            true,
            "STLS\r\nSTLS\r\n".into(),
            vec![A::StartTls, r("-ERR STLS not offered\r\n")],
        ),
        (
            "stls with argument",
            true,
            "STLS now\r\n".into(),
            vec![r("-ERR STLS takes no argument\r\n")],
        ),
        (
            "transaction commands",
            false,
            "STAT\r\nLIST\r\nRETR 1\r\nNOOP\r\nUIDL\r\nTOP 1 0\r\n".into(),
            vec![r("-ERR Log in first\r\n"); 6],
        ),
        (
            "unknown and empty",
            false,
            "XYZZY\r\n\r\n \r\n".into(),
            vec![
                r("-ERR Unknown command\r\n"),
                r("-ERR Empty command\r\n"),
                r("-ERR Empty command\r\n"),
            ],
        ),
        (
            "verb needs exact word",
            false,
            "CAPAX\r\nQUITE\r\n".into(),
            vec![r("-ERR Unknown command\r\n"), r("-ERR Unknown command\r\n")],
        ),
        (
            "nul in password passes through",
            false,
            "USER a\r\nPASS \u{0}\r\n".into(),
            vec![r("+OK Send PASS\r\n"), login("a", "\u{0}")],
        ),
        ("incomplete", false, "USER a".into(), vec![]),
    ];
    for (name, offer, input, expected) in cases {
        assert_eq!(dialogue(offer, &input), expected, "{name}");
    }
}

#[test]
fn non_utf8_credentials() {
    let mut fe = frontend(false);
    let mut buf = b"USER a\xff\r\nUSER a\r\nPASS \xc3\x28\r\n".to_vec();
    assert_eq!(
        run(&mut fe, &mut buf),
        vec![
            r("-ERR User name is not valid UTF-8\r\n"),
            r("+OK Send PASS\r\n"),
            r("-ERR Password is not valid UTF-8\r\n"),
        ]
    );
}

#[test]
fn pipelined_bytes_stay_after_login() {
    let plain = b64(b"\0alice\0pw");
    let cases: Vec<(String, &[u8])> = vec![
        (
            format!("AUTH PLAIN {plain}\r\nSTAT\r\nLIST\r\n"),
            b"STAT\r\nLIST\r\n",
        ),
        ("USER alice\r\nPASS pw\r\nRETR 1\r\n".into(), b"RETR 1\r\n"),
        (format!("AUTH PLAIN\r\n{plain}\nUIDL"), b"UIDL"),
    ];
    for (input, rest) in cases {
        let mut fe = frontend(false);
        let mut buf = input.into_bytes();
        loop {
            match view(fe.step(&mut buf)) {
                A::Login(u, p) => {
                    assert_eq!((u.as_str(), p.as_str()), ("alice", "pw"));
                    break;
                }
                A::Reply(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(buf, rest);
    }
}

#[test]
fn too_long_lines_close() {
    let expected = A::Close(format!("-ERR Line too long (limit {MAX_LINE} octets)\r\n"));
    // Without a line end: closes as soon as the limit is passed.
    let mut fe = frontend(false);
    let mut buf = vec![b'A'; MAX_LINE + 1];
    assert_eq!(view(fe.step(&mut buf)), A::NeedMore, "CR may still come");
    buf.push(b'A');
    assert_eq!(view(fe.step(&mut buf)), expected);
    assert!(buf.is_empty());
    // With a line end, one octet over the limit.
    let mut buf = vec![b'A'; MAX_LINE + 1];
    buf.extend_from_slice(b"\r\n");
    assert_eq!(view(frontend(false).step(&mut buf)), expected);
    // Exactly at the limit is fine, CRLF or bare LF.
    for end in [&b"\r\n"[..], b"\n"] {
        let mut buf = vec![b'A'; MAX_LINE];
        buf.extend_from_slice(end);
        assert_eq!(
            view(frontend(false).step(&mut buf)),
            r("-ERR Unknown command\r\n")
        );
        assert!(buf.is_empty());
    }
    // A long SASL response inside the limit decodes.
    let long_pw = "p".repeat(4000);
    let ir = b64(format!("\0alice\0{long_pw}").as_bytes());
    let mut buf = format!("AUTH PLAIN {ir}\r\n").into_bytes();
    assert_eq!(
        view(frontend(false).step(&mut buf)),
        login("alice", &long_pw)
    );
}

#[test]
fn byte_by_byte_equals_all_at_once() {
    let plain = b64(b"\0alice\0pw");
    let user = b64(b"alice");
    let pass = b64(b"pw");
    let inputs = [
        "CAPA\r\nUSER alice\r\nPASS pw\r\n".to_owned(),
        format!("AUTH PLAIN {plain}\r\n"),
        format!("AUTH PLAIN\r\n{plain}\r\n"),
        format!("AUTH LOGIN\r\n{user}\r\n{pass}\r\n"),
        format!("AUTH LOGIN {user}\n{pass}\n"),
        "AUTH\r\nAUTH XOAUTH2\r\nAPOP a b\r\nSTAT\r\nSTLS\r\nQUIT\r\n".to_owned(),
    ];
    for input in inputs {
        for offer in [false, true] {
            let whole = dialogue(offer, &input);
            let mut fe = frontend(offer);
            let mut buf = Vec::new();
            let mut bytewise = Vec::new();
            for &b in input.as_bytes() {
                buf.push(b);
                bytewise.extend(run(&mut fe, &mut buf));
                if matches!(bytewise.last(), Some(A::Close(_))) {
                    break;
                }
            }
            assert_eq!(bytewise, whole, "{input:?}");
        }
    }
}

#[test]
fn password_not_in_debug() {
    let mut buf = b"USER alice\r\nPASS hunter2\r\n".to_vec();
    let mut fe = frontend(false);
    let _ = fe.step(&mut buf);
    let action = fe.step(&mut buf);
    let debug = format!("{action:?} {fe:?}");
    assert!(debug.contains("alice"));
    assert!(!debug.contains("hunter2"), "{debug}");
    let mut buf = format!("AUTH LOGIN {}\r\n", b64(b"alice")).into_bytes();
    let _ = fe.step(&mut buf);
    let mut buf = format!("{}\r\n", b64(b"hunter2")).into_bytes();
    let action = fe.step(&mut buf);
    assert!(!format!("{action:?} {fe:?}").contains("hunter2"));
}

#[test]
fn failure_replies() {
    let cases = [
        (
            Failure::BadCredentials("Wrong password".into()),
            "-ERR [AUTH] Wrong password\r\n",
        ),
        (
            Failure::SignInNeeded("Sign in at http://127.0.0.1:8080/\r\nX".into()),
            "-ERR [AUTH] Sign in at http://127.0.0.1:8080/  X\r\n",
        ),
        (
            Failure::Unavailable("Cannot reach outlook.office365.com".into()),
            "-ERR [SYS/TEMP] Cannot reach outlook.office365.com\r\n",
        ),
        (
            Failure::Unavailable(String::new()),
            "-ERR [SYS/TEMP] Service temporarily unavailable\r\n",
        ),
    ];
    for (failure, expected) in cases {
        assert_eq!(
            String::from_utf8(failure_reply(&failure)).unwrap(),
            expected
        );
    }
    assert_eq!(starttls_ok(), b"+OK Begin TLS negotiation\r\n");
}

fn strings(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn capa_rewrite_table() {
    let dovecot = strings(&[
        "CAPA",
        "TOP",
        "UIDL",
        "RESP-CODES",
        "PIPELINING",
        "AUTH-RESP-CODE",
        "STLS",
        "USER",
        "SASL XOAUTH2 OAUTHBEARER",
    ]);
    let office365 = strings(&["TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER"]);
    let cases: Vec<(&str, Vec<String>, bool, Vec<String>)> = vec![
        (
            "dovecot, no stls",
            dovecot.clone(),
            false,
            strings(&[
                "CAPA",
                "TOP",
                "UIDL",
                "RESP-CODES",
                "PIPELINING",
                "AUTH-RESP-CODE",
                "USER",
                "SASL PLAIN LOGIN",
            ]),
        ),
        (
            "dovecot, stls",
            dovecot,
            true,
            strings(&[
                "CAPA",
                "TOP",
                "UIDL",
                "RESP-CODES",
                "PIPELINING",
                "AUTH-RESP-CODE",
                "STLS",
                "USER",
                "SASL PLAIN LOGIN",
            ]),
        ),
        (
            "office 365",
            office365,
            false,
            strings(&[
                "TOP",
                "UIDL",
                "SASL PLAIN LOGIN",
                "USER",
                "RESP-CODES",
                "AUTH-RESP-CODE",
            ]),
        ),
        (
            "empty upstream, stls added",
            vec![],
            true,
            strings(&[
                "USER",
                "SASL PLAIN LOGIN",
                "RESP-CODES",
                "AUTH-RESP-CODE",
                "STLS",
            ]),
        ),
        (
            "hostile and duplicate lines",
            strings(&[
                "top",
                "TOP",
                "",
                ".",
                "..x",
                "SASL GSSAPI",
                "sasl XOAUTH2",
                "X-OAUTH XOAUTH2",
                "IMPLEMENTATION evil\r\n.\r\n",
                "stls",
                "user",
            ]),
            false,
            strings(&[
                "top",
                "SASL PLAIN LOGIN",
                "IMPLEMENTATION evil  .",
                "USER",
                "RESP-CODES",
                "AUTH-RESP-CODE",
            ]),
        ),
    ];
    for (name, upstream, offer, expected) in cases {
        assert_eq!(rewrite_capa(&upstream, offer), expected, "{name}");
    }
}

#[test]
fn capa_reply_is_dot_stuffed() {
    let mut fe = Frontend::new(strings(&[".hidden", "A\r\nB"]), false);
    let mut buf = b"CAPA\r\n".to_vec();
    assert_eq!(
        view(fe.step(&mut buf)),
        r("+OK Capability list follows\r\n..hidden\r\nA  B\r\n.\r\n")
    );
    fe.set_capa(strings(&["USER"]));
    let mut buf = b"CAPA\r\n".to_vec();
    assert_eq!(
        view(fe.step(&mut buf)),
        r("+OK Capability list follows\r\nUSER\r\n.\r\n")
    );
}

#[test]
fn greeting_hides_apop_timestamp() {
    let cases: [(&[u8], &str); 5] = [
        (
            b"Dovecot ready. <1896.697170952@dbc.mtview.ca.us>",
            "+OK Dovecot ready.\r\n",
        ),
        (
            b"The Microsoft Exchange POP3 service is ready. [QQBNADMA]",
            "+OK The Microsoft Exchange POP3 service is ready. [QQBNADMA]\r\n",
        ),
        (b"a <b> c", "+OK a <b> c\r\n"),
        (b"", "+OK POP3 ready\r\n"),
        (b"x <y@z\r\n", "+OK x <y@z\r\n"),
    ];
    for (upstream, expected) in cases {
        assert_eq!(String::from_utf8(greeting(upstream)).unwrap(), expected);
    }
}

#[test]
fn reply_parsing() {
    let cases: [(&[u8], Option<Reply<'_>>); 13] = [
        (
            b"+OK User successfully authenticated.\r\n",
            Some(Reply::Ok(b"User successfully authenticated.")),
        ),
        (b"+OK", Some(Reply::Ok(b""))),
        (b"+ok fine\n", Some(Reply::Ok(b"fine"))),
        (
            b"-ERR Authentication failure: unknown user name or bad password.\r\n",
            Some(Reply::Err(
                b"Authentication failure: unknown user name or bad password.",
            )),
        ),
        (b"-ERR", Some(Reply::Err(b""))),
        (
            b"+ eyJzdGF0dXMiOiI0MDEifQ==\r\n",
            Some(Reply::Continuation(b"eyJzdGF0dXMiOiI0MDEifQ==")),
        ),
        (b"+\r\n", Some(Reply::Continuation(b""))),
        (b"+ ", Some(Reply::Continuation(b""))),
        (b"+OKAY", None),
        (b"-ERROR", None),
        (b"", None),
        (b"* OK imap", None),
        (b"+x", None),
    ];
    for (line, expected) in cases {
        assert_eq!(
            parse_reply(line),
            expected,
            "{:?}",
            String::from_utf8_lossy(line)
        );
    }
}

/// Pieces that steer random input into every state, mixed with noise.
const FRAGMENTS: &[&[u8]] = &[
    b"USER ",
    b"PASS ",
    b"AUTH ",
    b"PLAIN",
    b"LOGIN",
    b"XOAUTH2",
    b"CAPA",
    b"STLS",
    b"APOP",
    b"QUIT",
    b"*",
    b"=",
    b" ",
    b"\r\n",
    b"\n",
    b"\r",
    b"AGFsaWNlAHB3",
    b"YWxpY2U=",
    b"\xff",
    b"\0",
    b".",
];

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..4000 {
        let input = random_input(&mut rng, FRAGMENTS, MAX_LINE);
        let mut fe = Frontend::new(strings(&["USER"]), rng.below(2) == 0);
        feed_in_random_chunks(&mut rng, &input, MAX_LINE + 1, |buf| match fe.step(buf) {
            Action::NeedMore => Fed::NeedMore,
            Action::Close(_) => Fed::Closed,
            _ => Fed::Progress,
        });
    }
}

/// Finding: a user name with a line break forged a log line. USER, AUTH
/// PLAIN and AUTH LOGIN refuse control characters before any login.
#[test]
fn control_characters_in_user_names_are_refused() {
    let refused = r("-ERR the user name contains control characters\r\n");
    for name in [
        &b"ceo\rINFO x"[..],
        b"a\x00b",
        b"a\x01b",
        b"\x1b[2J",
        b"a\x7fb",
        b"a\xc2\x85b",
    ] {
        let mut user_line = b"USER ".to_vec();
        user_line.extend_from_slice(name);
        user_line.extend_from_slice(b"\r\nPASS pw\r\n");
        let got = run(&mut frontend(false), &mut user_line);
        assert_eq!(
            got,
            vec![refused.clone(), r("-ERR USER first\r\n")],
            "{name:?}"
        );

        // In PLAIN a NUL separates the parts: it cannot be inside a name.
        if !name.contains(&0) {
            let mut plain = b"\0".to_vec();
            plain.extend_from_slice(name);
            plain.extend_from_slice(b"\0pw");
            let got = dialogue(false, &format!("AUTH PLAIN {}\r\n", b64(&plain)));
            assert_eq!(got, vec![refused.clone()], "{name:?}");
        }

        let got = dialogue(false, &format!("AUTH LOGIN\r\n{}\r\n", b64(name)));
        assert_eq!(
            got,
            vec![r("+ VXNlcm5hbWU6\r\n"), refused.clone()],
            "{name:?}"
        );
    }
    // A LF inside a base64 user name cannot reach USER: it ends the line.
    let got = dialogue(false, "USER ceo\nINFO forged\r\n");
    assert_eq!(got[0], r("+OK Send PASS\r\n"));
}

#[test]
fn before_tls_where_passwords_need_it_capa_offers_no_login() {
    let full = rewrite_capa(&strings(&["TOP", "USER", "SASL XOAUTH2", "UIDL"]), true);
    let before = without_logins(&full);
    assert_eq!(
        before,
        strings(&["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "STLS"])
    );
    let mut fe = Frontend::new(before, true);
    let got = run(&mut fe, &mut b"CAPA\r\nAUTH\r\n".to_vec());
    assert_eq!(
        got,
        vec![
            r(
                "+OK Capability list follows\r\nTOP\r\nUIDL\r\nRESP-CODES\r\nAUTH-RESP-CODE\r\nSTLS\r\n.\r\n"
            ),
            r("+OK\r\n.\r\n"),
        ]
    );
    // After STLS the full list (without STLS) is back, AUTH lists mechanisms.
    fe.set_capa(rewrite_capa(
        &strings(&["TOP", "USER", "SASL XOAUTH2", "UIDL"]),
        false,
    ));
    let got = run(&mut fe, &mut b"AUTH\r\n".to_vec());
    assert_eq!(got, vec![r("+OK\r\nPLAIN\r\nLOGIN\r\n.\r\n")]);
}
