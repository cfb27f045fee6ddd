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
    Ehlo(String, bool),
    Login(String, String),
    StartTls,
    Close(String),
}

fn view(action: Action) -> A {
    match action {
        Action::NeedMore => A::NeedMore,
        Action::Reply(b) => A::Reply(String::from_utf8(b).unwrap()),
        Action::Ehlo { domain, extended } => A::Ehlo(domain, extended),
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

fn ehlo(d: &str) -> A {
    A::Ehlo(d.to_owned(), true)
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
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

fn dialogue(offer: bool, input: &str) -> Vec<A> {
    run(&mut Frontend::new(offer), &mut input.as_bytes().to_vec())
}

const AUTH_REQ: &str = "530 5.7.0 Authentication required\r\n";

#[test]
fn dialogue_table() {
    let plain = b64(b"\0alice@contoso.com\0pa ss");
    let user = b64(b"alice@contoso.com");
    let pass = b64(b"s3cret");
    let cases: Vec<(&str, bool, String, Vec<A>)> = vec![
        (
            "ehlo",
            false,
            "EHLO client.example\r\n".into(),
            vec![ehlo("client.example")],
        ),
        (
            "helo lower case, extra words",
            false,
            "helo  [192.0.2.1] extra\r\n".into(),
            vec![A::Ehlo("[192.0.2.1]".into(), false)],
        ),
        (
            "ehlo without domain",
            false,
            "EHLO\r\nHELO \r\n".into(),
            vec![
                r("501 5.5.4 Syntax: EHLO hostname\r\n"),
                r("501 5.5.4 Syntax: HELO hostname\r\n"),
            ],
        ),
        (
            "ehlo with control characters",
            false,
            "EHLO \u{0}ok\r\nEHLO a\u{7f}\r\n".into(),
            vec![
                r("501 5.5.4 Invalid domain\r\n"),
                r("501 5.5.4 Invalid domain\r\n"),
            ],
        ),
        (
            "auth before ehlo",
            false,
            format!("AUTH PLAIN {plain}\r\n"),
            vec![r("503 5.5.1 Send EHLO first\r\n")],
        ),
        (
            "auth failed ehlo does not greet",
            false,
            format!("EHLO\r\nAUTH PLAIN {plain}\r\n"),
            vec![
                r("501 5.5.4 Syntax: EHLO hostname\r\n"),
                r("503 5.5.1 Send EHLO first\r\n"),
            ],
        ),
        (
            "auth plain ir",
            false,
            format!("EHLO x\r\nAUTH PLAIN {plain}\r\n"),
            vec![ehlo("x"), login("alice@contoso.com", "pa ss")],
        ),
        (
            "auth after helo",
            false,
            format!("HELO x\r\nauth plain {plain}\n"),
            vec![
                A::Ehlo("x".into(), false),
                login("alice@contoso.com", "pa ss"),
            ],
        ),
        (
            "auth plain challenge",
            false,
            format!("EHLO x\r\nAUTH PLAIN\r\n{plain}\r\n"),
            vec![
                ehlo("x"),
                r("334 \r\n"),
                login("alice@contoso.com", "pa ss"),
            ],
        ),
        (
            "auth plain empty ir",
            false,
            "EHLO x\r\nAUTH PLAIN =\r\n".into(),
            vec![
                ehlo("x"),
                r("501 5.5.2 the PLAIN response must be authzid NUL authcid NUL password\r\n"),
            ],
        ),
        (
            "auth plain bad base64",
            false,
            "EHLO x\r\nAUTH PLAIN\r\n!!!!\r\n".into(),
            vec![
                ehlo("x"),
                r("334 \r\n"),
                r("501 5.5.2 the response is not valid base64\r\n"),
            ],
        ),
        (
            "auth plain cancelled",
            false,
            "EHLO x\r\nAUTH PLAIN\r\n*\r\nNOOP\r\n".into(),
            vec![
                ehlo("x"),
                r("334 \r\n"),
                r("501 5.7.0 Authentication cancelled\r\n"),
                r("250 2.0.0 OK\r\n"),
            ],
        ),
        (
            "auth login",
            false,
            format!("EHLO x\r\nAUTH LOGIN\r\n{user}\r\n{pass}\r\n"),
            vec![
                ehlo("x"),
                r("334 VXNlcm5hbWU6\r\n"),
                r("334 UGFzc3dvcmQ6\r\n"),
                login("alice@contoso.com", "s3cret"),
            ],
        ),
        (
            "auth login inline user (Outlook)",
            false,
            format!("EHLO x\r\nAUTH LOGIN {user}\r\n{pass}\r\n"),
            vec![
                ehlo("x"),
                r("334 UGFzc3dvcmQ6\r\n"),
                login("alice@contoso.com", "s3cret"),
            ],
        ),
        (
            "auth login empty password",
            false,
            format!("EHLO x\r\nAUTH LOGIN {user}\r\n=\r\n"),
            vec![
                ehlo("x"),
                r("334 UGFzc3dvcmQ6\r\n"),
                login("alice@contoso.com", ""),
            ],
        ),
        (
            "auth login empty user",
            false,
            "EHLO x\r\nAUTH LOGIN\r\n=\r\n".into(),
            vec![
                ehlo("x"),
                r("334 VXNlcm5hbWU6\r\n"),
                r("501 5.5.2 the user name is empty\r\n"),
            ],
        ),
        (
            "auth login cancel at password",
            false,
            format!("EHLO x\r\nAUTH LOGIN {user}\r\n*\r\n"),
            vec![
                ehlo("x"),
                r("334 UGFzc3dvcmQ6\r\n"),
                r("501 5.7.0 Authentication cancelled\r\n"),
            ],
        ),
        (
            "auth login bad base64 user",
            false,
            "EHLO x\r\nAUTH LOGIN ###\r\n".into(),
            vec![
                ehlo("x"),
                r("501 5.5.2 the response is not valid base64\r\n"),
            ],
        ),
        (
            "other mechanisms",
            false,
            "EHLO x\r\nAUTH XOAUTH2 abc\r\nAUTH NTLM\r\nAUTH CRAM-MD5\r\n".into(),
            vec![
                ehlo("x"),
                r("504 5.5.4 Unrecognized authentication type, use PLAIN or LOGIN\r\n"),
                r("504 5.5.4 Unrecognized authentication type, use PLAIN or LOGIN\r\n"),
                r("504 5.5.4 Unrecognized authentication type, use PLAIN or LOGIN\r\n"),
            ],
        ),
        (
            "auth syntax",
            false,
            "EHLO x\r\nAUTH\r\nAUTH PLAIN a b\r\n".into(),
            vec![
                ehlo("x"),
                r("501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
                r("501 5.5.4 Syntax: AUTH mechanism [initial-response]\r\n"),
            ],
        ),
        (
            "pipelined transaction before auth",
            false,
            "EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n".into(),
            vec![ehlo("x"), r(AUTH_REQ), r(AUTH_REQ), r(AUTH_REQ)],
        ),
        (
            "transaction before greeting",
            false,
            "mail from:<a@b>\r\n".into(),
            vec![r(AUTH_REQ)],
        ),
        (
            "bdat chunk skipped",
            false,
            "EHLO x\r\nBDAT 12 LAST\r\nQUIT\r\nQUIT\r\nNOOP\r\n".into(),
            vec![ehlo("x"), r(AUTH_REQ), r("250 2.0.0 OK\r\n")],
        ),
        (
            "bdat zero",
            false,
            "BDAT 0 LAST\r\nNOOP\r\n".into(),
            vec![r(AUTH_REQ), r("250 2.0.0 OK\r\n")],
        ),
        (
            "bdat waits for chunk",
            false,
            "BDAT 100\r\nQUIT\r\n".into(),
            vec![],
        ),
        (
            "bdat syntax",
            false,
            "BDAT\r\nBDAT x\r\nBDAT 1 FIRST\r\nBDAT 1 LAST x\r\nBDAT 99999999999999999999\r\n"
                .into(),
            vec![r("501 5.5.4 Syntax: BDAT size [LAST]\r\n"); 5],
        ),
        (
            "quit",
            false,
            "QUIT\r\nNOOP\r\n".into(),
            vec![A::Close("221 2.0.0 Bye\r\n".into())],
        ),
        (
            "noop rset help vrfy",
            false,
            "NOOP\r\nRSET\r\nHELP\r\nVRFY alice\r\n".into(),
            vec![
                r("250 2.0.0 OK\r\n"),
                r("250 2.0.0 OK\r\n"),
                r("214 2.0.0 Send EHLO, then AUTH PLAIN or AUTH LOGIN\r\n"),
                r("252 2.5.2 Cannot VRFY user\r\n"),
            ],
        ),
        (
            "unknown and empty",
            false,
            "EXPN list\r\n\r\nEHLOX y\r\n".into(),
            vec![
                r("500 5.5.2 Command not recognized\r\n"),
                r("500 5.5.2 Command not recognized\r\n"),
                r("500 5.5.2 Command not recognized\r\n"),
            ],
        ),
        (
            "starttls not offered",
            false,
            "STARTTLS\r\n".into(),
            vec![r("502 5.5.1 STARTTLS not offered\r\n")],
        ),
        (
            "starttls offered",
            true,
            "EHLO x\r\nstarttls\r\n".into(),
            vec![ehlo("x"), A::StartTls],
        ),
        (
            "starttls with argument",
            true,
            "STARTTLS now\r\n".into(),
            vec![r("501 5.5.4 Syntax: STARTTLS (no parameters)\r\n")],
        ),
        (
            "starttls resets greeting, once only",
            true,
            format!("EHLO x\r\nSTARTTLS\r\nAUTH PLAIN {plain}\r\nSTARTTLS\r\n"),
            vec![
                ehlo("x"),
                A::StartTls,
                r("503 5.5.1 Send EHLO first\r\n"),
                r("502 5.5.1 STARTTLS not offered\r\n"),
            ],
        ),
        (
            "ehlo resets a session",
            false,
            format!("EHLO a\r\nEHLO b\r\nAUTH PLAIN {plain}\r\n"),
            vec![ehlo("a"), ehlo("b"), login("alice@contoso.com", "pa ss")],
        ),
        (
            "retry after login",
            false,
            format!("EHLO a\r\nAUTH PLAIN {plain}\r\nAUTH PLAIN {plain}\r\n"),
            vec![
                ehlo("a"),
                login("alice@contoso.com", "pa ss"),
                login("alice@contoso.com", "pa ss"),
            ],
        ),
        ("incomplete", false, "EHLO x".into(), vec![]),
    ];
    for (name, offer, input, expected) in cases {
        assert_eq!(dialogue(offer, &input), expected, "{name}");
    }
}

#[test]
fn ehlo_non_utf8_domain() {
    let mut buf = b"EHLO \xff\r\nEHLO caf\xc3\xa9.example\r\n".to_vec();
    assert_eq!(
        run(&mut Frontend::new(false), &mut buf),
        vec![r("501 5.5.4 Invalid domain\r\n"), ehlo("caf\u{e9}.example")]
    );
}

#[test]
fn bdat_with_buffered_chunk_replies_at_once() {
    let mut fe = Frontend::new(false);
    let mut buf = b"BDAT 3 LAST\r\nabc".to_vec();
    assert_eq!(view(fe.step(&mut buf)), r(AUTH_REQ));
    assert!(buf.is_empty());
}

#[test]
fn bdat_chunk_is_never_parsed_and_is_wiped() {
    let mut fe = Frontend::new(false);
    let mut buf = b"BDAT 10 LAST\r\nQUIT\r\n".to_vec();
    assert_eq!(view(fe.step(&mut buf)), A::NeedMore);
    assert_eq!(
        view(fe.step(&mut buf)),
        A::NeedMore,
        "4 octets still to skip"
    );
    assert!(buf.is_empty());
    buf.extend_from_slice(b"AB\r\nNOOP\r\n");
    assert_eq!(view(fe.step(&mut buf)), r(AUTH_REQ));
    assert_eq!(buf, b"NOOP\r\n");
}

#[test]
fn pipelined_bytes_stay_after_login() {
    let plain = b64(b"\0alice\0pw");
    let user = b64(b"alice");
    let pass = b64(b"pw");
    let cases: Vec<(String, &[u8])> = vec![
        (
            format!("EHLO x\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@b>\r\n"),
            b"MAIL FROM:<a@b>\r\n",
        ),
        (
            format!(
                "EHLO x\r\nAUTH LOGIN {user}\r\n{pass}\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
            ),
            b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n",
        ),
        (format!("EHLO x\nAUTH PLAIN\n{plain}\nQUIT"), b"QUIT"),
    ];
    for (input, rest) in cases {
        let mut fe = Frontend::new(false);
        let mut buf = input.into_bytes();
        loop {
            match view(fe.step(&mut buf)) {
                A::Login(u, p) => {
                    assert_eq!((u.as_str(), p.as_str()), ("alice", "pw"));
                    break;
                }
                A::Reply(_) | A::Ehlo(..) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(buf, rest);
    }
}

#[test]
fn too_long_lines_close() {
    let expected = A::Close(format!(
        "500 5.5.2 Line too long (limit {MAX_LINE} octets)\r\n"
    ));
    let mut fe = Frontend::new(false);
    let mut buf = vec![b'A'; MAX_LINE + 1];
    assert_eq!(view(fe.step(&mut buf)), A::NeedMore, "CR may still come");
    buf.push(b'A');
    assert_eq!(view(fe.step(&mut buf)), expected);
    assert!(buf.is_empty());
    let mut buf = vec![b'A'; MAX_LINE + 1];
    buf.push(b'\n');
    assert_eq!(view(Frontend::new(false).step(&mut buf)), expected);
    let mut buf = vec![b'A'; MAX_LINE];
    buf.extend_from_slice(b"\r\n");
    assert_eq!(
        view(Frontend::new(false).step(&mut buf)),
        r("500 5.5.2 Command not recognized\r\n")
    );
    // RFC 4954: AUTH lines up to 12288 octets must work.
    let long_pw = "p".repeat(9000);
    let ir = b64(format!("\0alice\0{long_pw}").as_bytes());
    assert!(ir.len() + 11 <= MAX_LINE);
    let mut buf = format!("EHLO x\r\nAUTH PLAIN {ir}\r\n").into_bytes();
    let mut fe = Frontend::new(false);
    assert_eq!(view(fe.step(&mut buf)), ehlo("x"));
    assert_eq!(view(fe.step(&mut buf)), login("alice", &long_pw));
}

#[test]
fn byte_by_byte_equals_all_at_once() {
    let plain = b64(b"\0alice\0pw");
    let user = b64(b"alice");
    let pass = b64(b"pw");
    let inputs = [
        format!("EHLO x\r\nAUTH PLAIN {plain}\r\n"),
        format!("HELO x\nAUTH PLAIN\n{plain}\n"),
        format!("EHLO x\r\nAUTH LOGIN\r\n{user}\r\n{pass}\r\n"),
        format!("EHLO x\r\nAUTH LOGIN {user}\r\n{pass}\r\nMAIL FROM:<a@b>\r\n"),
        "EHLO x\r\nSTARTTLS\r\nAUTH XOAUTH2\r\nMAIL FROM:<a@b>\r\nBDAT 5 LAST\r\nabcdeNOOP\r\nQUIT\r\n"
            .to_owned(),
    ];
    for input in inputs {
        for offer in [false, true] {
            let whole = dialogue(offer, &input);
            let mut fe = Frontend::new(offer);
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
    let mut fe = Frontend::new(false);
    let mut buf = format!(
        "EHLO x\r\nAUTH LOGIN {}\r\n{}\r\n",
        b64(b"alice"),
        b64(b"hunter2")
    )
    .into_bytes();
    let _ = fe.step(&mut buf);
    let _ = fe.step(&mut buf);
    let debug_mid = format!("{fe:?}");
    let action = fe.step(&mut buf);
    let debug = format!("{action:?} {fe:?} {debug_mid}");
    assert!(debug.contains("alice"));
    assert!(!debug.contains("hunter2"), "{debug}");
    let mut buf = format!("AUTH PLAIN {}\r\n", b64(b"\0alice\0hunter2")).into_bytes();
    let action = fe.step(&mut buf);
    assert!(!format!("{action:?}").contains("hunter2"));
}

#[test]
fn failure_replies() {
    let cases = [
        (
            Failure::BadCredentials("Wrong password".into()),
            "535 5.7.8 Wrong password\r\n",
        ),
        (
            Failure::SignInNeeded("Sign in at\r\nhttp://127.0.0.1:8080/".into()),
            "535 5.7.8 Sign in at  http://127.0.0.1:8080/\r\n",
        ),
        (
            Failure::Unavailable("Cannot reach smtp.office365.com".into()),
            "454 4.7.0 Cannot reach smtp.office365.com\r\n",
        ),
        (
            Failure::BadCredentials(" ".into()),
            "535 5.7.8 Authentication credentials invalid\r\n",
        ),
    ];
    for (failure, expected) in cases {
        assert_eq!(
            String::from_utf8(failure_reply(&failure)).unwrap(),
            expected
        );
    }
    assert_eq!(starttls_ok(), b"220 2.0.0 Ready to start TLS\r\n");
}

fn strings(lines: &[&str]) -> Vec<String> {
    lines.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn ehlo_rewrite_table() {
    let office365_tls = strings(&[
        "smtp.office365.com Hello [203.0.113.7]",
        "SIZE 157286400",
        "PIPELINING",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "AUTH LOGIN XOAUTH2",
        "8BITMIME",
        "BINARYMIME",
        "CHUNKING",
        "SMTPUTF8",
    ]);
    let office365_plain = strings(&[
        "smtp.office365.com Hello [203.0.113.7]",
        "SIZE 157286400",
        "PIPELINING",
        "STARTTLS",
        "8BITMIME",
    ]);
    let dovecot = strings(&[
        "mail.example.org",
        "8BITMIME",
        "AUTH XOAUTH2 OAUTHBEARER",
        "BURL imap",
        "CHUNKING",
        "ENHANCEDSTATUSCODES",
        "SIZE",
        "PIPELINING",
    ]);
    let cases: Vec<(&str, &[String], bool, bool, &str)> = vec![
        (
            "office 365 after TLS",
            &office365_tls,
            true,
            false,
            "250-smtp.office365.com Hello [203.0.113.7]\r\n250-SIZE 157286400\r\n\
             250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n\
             250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n",
        ),
        (
            "office 365 after TLS, local starttls",
            &office365_tls,
            true,
            true,
            "250-smtp.office365.com Hello [203.0.113.7]\r\n250-SIZE 157286400\r\n\
             250-PIPELINING\r\n250-DSN\r\n250-ENHANCEDSTATUSCODES\r\n250-AUTH PLAIN LOGIN\r\n\
             250-8BITMIME\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n",
        ),
        (
            "office 365 before TLS: starttls hidden, auth added",
            &office365_plain,
            true,
            false,
            "250-smtp.office365.com Hello [203.0.113.7]\r\n250-SIZE 157286400\r\n\
             250-PIPELINING\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN\r\n",
        ),
        (
            "office 365 before TLS, starttls kept in place",
            &office365_plain,
            true,
            true,
            "250-smtp.office365.com Hello [203.0.113.7]\r\n250-SIZE 157286400\r\n\
             250-PIPELINING\r\n250-STARTTLS\r\n250-8BITMIME\r\n250 AUTH PLAIN LOGIN\r\n",
        ),
        (
            "dovecot submission",
            &dovecot,
            true,
            false,
            "250-mail.example.org\r\n250-8BITMIME\r\n250-AUTH PLAIN LOGIN\r\n250-BURL imap\r\n\
             250-CHUNKING\r\n250-ENHANCEDSTATUSCODES\r\n250-SIZE\r\n250 PIPELINING\r\n",
        ),
        (
            "helo",
            &office365_tls,
            false,
            true,
            "250 smtp.office365.com Hello [203.0.113.7]\r\n",
        ),
        (
            "empty upstream",
            &[],
            true,
            false,
            "250-xoauth2-proxy\r\n250 AUTH PLAIN LOGIN\r\n",
        ),
        (
            "empty upstream, helo",
            &[],
            false,
            false,
            "250 xoauth2-proxy\r\n",
        ),
    ];
    for (name, upstream, extended, offer, expected) in cases {
        let got =
            String::from_utf8(ehlo_reply(upstream, extended, EhloOffer::login(offer))).unwrap();
        assert_eq!(got, expected, "{name}");
    }
}

#[test]
fn ehlo_rewrite_hostile_lines() {
    let upstream = strings(&[
        "host\r\n250 injected",
        "AUTH=LOGIN",
        "auth GSSAPI NTLM",
        "AUTH LOGIN PLAIN",
        "X-EXPS GSSAPI NTLM",
        "",
        "  ",
        "pipelining",
        "PIPELINING",
        "starttls",
        "8BITMIME\n",
    ]);
    let got = String::from_utf8(ehlo_reply(&upstream, true, EhloOffer::login(false))).unwrap();
    assert_eq!(
        got,
        "250-host  250 injected\r\n250-AUTH PLAIN LOGIN\r\n250-pipelining\r\n250 8BITMIME\r\n"
    );
}

#[test]
fn reply_parsing_table() {
    type Expected = Result<Option<(u16, Vec<&'static [u8]>, usize)>, ReplyError>;
    let cases: Vec<(&[u8], Expected)> = vec![
        (
            b"235 2.7.0 Authentication successful\r\n",
            Ok(Some((235, vec![b"2.7.0 Authentication successful"], 37))),
        ),
        (
            b"250-smtp.office365.com Hello\r\n250-SIZE 157286400\r\n250 CHUNKING\r\nMORE",
            Ok(Some((
                250,
                vec![b"smtp.office365.com Hello", b"SIZE 157286400", b"CHUNKING"],
                64,
            ))),
        ),
        (b"334 \r\n", Ok(Some((334, vec![b""], 6)))),
        (b"334\n", Ok(Some((334, vec![b""], 4)))),
        (b"250-\r\n250 x\r\n", Ok(Some((250, vec![b"", b"x"], 13)))),
        (b"220 ready\n", Ok(Some((220, vec![b"ready"], 10)))),
        (b"", Ok(None)),
        (b"250", Ok(None)),
        (b"250-a\r\n250 b", Ok(None)),
        (b"250-a\r\n", Ok(None)),
        (b"250-a\r\n251 b\r\n", Err(ReplyError::MixedCodes)),
        (b"25x ok\r\n", Err(ReplyError::Malformed)),
        (b"25\r\n", Err(ReplyError::Malformed)),
        (b"\r\n", Err(ReplyError::Malformed)),
        (b"650 no\r\n", Err(ReplyError::Malformed)),
        (b"250_x\r\n", Err(ReplyError::Malformed)),
        (b"2500 x\r\n", Err(ReplyError::Malformed)),
        (b"250-a\r\nxyz\r\n", Err(ReplyError::Malformed)),
        (b"\xff\xfe\xfd\n", Err(ReplyError::Malformed)),
    ];
    for (input, expected) in cases {
        let got = parse_reply(input).map(|o| o.map(|(r, n)| (r.code, r.lines, n)));
        let expected = expected.map(|o| {
            o.map(|(c, lines, n)| (c, lines.into_iter().map(<[u8]>::to_vec).collect(), n))
        });
        assert_eq!(got, expected, "{:?}", String::from_utf8_lossy(input));
    }
}

#[test]
fn reply_size_is_capped() {
    let mut big = Vec::new();
    while big.len() <= MAX_REPLY {
        big.extend_from_slice(b"250-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n");
    }
    assert_eq!(parse_reply(&big), Err(ReplyError::TooLong));
    big.extend_from_slice(b"250 end\r\n");
    assert_eq!(parse_reply(&big), Err(ReplyError::TooLong));
    let no_line_end = vec![b'2'; MAX_REPLY + 1];
    assert_eq!(parse_reply(&no_line_end), Err(ReplyError::TooLong));
    let just_under = vec![b'5'; MAX_REPLY];
    assert_eq!(parse_reply(&just_under), Ok(None));
}

#[test]
fn render_and_parse_round_trip() {
    let cases: Vec<(u16, Vec<&[u8]>, &str)> = vec![
        (250, vec![b"a", b"b c"], "250-a\r\n250 b c\r\n"),
        (535, vec![b"5.7.8 no"], "535 5.7.8 no\r\n"),
        (334, vec![b""], "334\r\n"),
        (250, vec![b"", b"x"], "250-\r\n250 x\r\n"),
        (250, vec![], "250\r\n"),
        (421, vec![b"bad\r\n250 ok"], "421 bad  250 ok\r\n"),
    ];
    for (code, lines, expected) in cases {
        let rendered = render_reply(code, &lines);
        assert_eq!(String::from_utf8(rendered.clone()).unwrap(), expected);
        let (parsed, used) = parse_reply(&rendered).unwrap().unwrap();
        assert_eq!(used, rendered.len());
        assert_eq!(parsed.code, code);
    }
    let (reply, _) = parse_reply(b"250-a\r\n250 b\r\n").unwrap().unwrap();
    assert_eq!(reply.text_lines(), vec!["a".to_owned(), "b".to_owned()]);
}

/// Pieces that steer random input into every state, mixed with noise.
const FRAGMENTS: &[&[u8]] = &[
    b"EHLO ",
    b"HELO ",
    b"AUTH ",
    b"PLAIN",
    b"LOGIN",
    b"XOAUTH2",
    b"STARTTLS",
    b"BDAT ",
    b"3",
    b"LAST",
    b"MAIL FROM:<a@b>",
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
];

#[test]
fn random_input_never_panics_and_stays_bounded() {
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..4000 {
        let input = random_input(&mut rng, FRAGMENTS, MAX_LINE);
        let mut fe = Frontend::new(rng.below(2) == 0);
        feed_in_random_chunks(&mut rng, &input, MAX_LINE + 1, |buf| match fe.step(buf) {
            Action::NeedMore => Fed::NeedMore,
            Action::Close(_) => Fed::Closed,
            _ => Fed::Progress,
        });
        // Upstream parser on the same bytes: must not panic either.
        let _ = parse_reply(&input);
    }
}

#[test]
fn leading_mail_from_finds_the_sender() {
    let cases: &[(&[u8], Option<Option<&str>>)] = &[
        (
            b"MAIL FROM:<scan@contoso.com>\r\n",
            Some(Some("scan@contoso.com")),
        ),
        (
            b"mail from: <Scan@Contoso.com> SIZE=100 BODY=8BITMIME\r\nRCPT",
            Some(Some("Scan@Contoso.com")),
        ),
        (b"MAIL FROM:<>\r\n", Some(Some(""))),
        (
            b"MAIL FROM:<@relay.example:scan@contoso.com>\r\n",
            Some(Some("scan@contoso.com")),
        ),
        (b"MAIL FROM:scan@contoso.com\r\n", Some(None)),
        (b"MAIL FROM:<no at sign>\r\n", Some(None)),
        (b"MAIL FROM:<a@b>x\r\n", Some(None)),
        (b"MAIL FROM:<scan@contoso.com>", None),
        (b"RCPT TO:<a@b>\r\n", None),
        (b"MAIL\r\n", None),
    ];
    for (input, want) in cases {
        let got = leading_mail_from(input);
        assert_eq!(
            got.as_ref().map(|m| m.sender.as_deref()),
            *want,
            "{}",
            input.escape_ascii()
        );
    }
    let m = leading_mail_from(b"MAIL FROM:<a@b>\r\nDATA\r\n").unwrap();
    assert_eq!(m.consumed, 17);
}

#[test]
fn ehlo_offer_hides_auth_before_tls_and_chunking_on_a_relay() {
    let upstream = strings(&[
        "smtp.office365.com Hello",
        "SIZE 157286400",
        "PIPELINING",
        "AUTH LOGIN XOAUTH2",
        "BINARYMIME",
        "CHUNKING",
        "SMTPUTF8",
    ]);
    let cases: &[(EhloOffer, &str)] = &[
        (
            EhloOffer {
                starttls: true,
                auth: false,
                chunking: true,
            },
            "250-smtp.office365.com Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n",
        ),
        (
            EhloOffer {
                starttls: false,
                auth: true,
                chunking: false,
            },
            "250-smtp.office365.com Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n",
        ),
        (
            EhloOffer {
                starttls: false,
                auth: false,
                chunking: false,
            },
            "250-smtp.office365.com Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n",
        ),
    ];
    for (offer, expected) in cases {
        let got = String::from_utf8(ehlo_reply(&upstream, true, *offer)).unwrap();
        assert_eq!(got, *expected, "{offer:?}");
    }
}
