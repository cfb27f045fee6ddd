use super::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::ExposeSecret;

// The upstream-side helpers' tables, which share this module's helpers.
#[path = "server_tests.rs"]
mod server;

// AUTHENTICATE PLAIN and LOGIN dialogues, and the mechanisms refused.
#[path = "sasl_tests.rs"]
mod sasl;

// Splitting and pseudo-random input: whatever the bytes, bounded and stable.
#[path = "random_tests.rs"]
mod random;

/// An action in comparable form; passwords are exposed here only.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Out {
    Reply(String),
    Login {
        tag: String,
        user: String,
        pass: String,
    },
    StartTls(String),
    Close(String),
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn out(action: Action) -> Option<Out> {
    match action {
        Action::NeedMore => None,
        Action::Reply(b) => Some(Out::Reply(text(&b))),
        Action::Login { tag, credentials } => Some(Out::Login {
            tag,
            user: credentials.username.clone(),
            pass: credentials.password.expose_secret().to_owned(),
        }),
        Action::StartTls { tag } => Some(Out::StartTls(tag)),
        Action::Close(b) => Some(Out::Close(text(&b))),
    }
}

fn reply(s: &str) -> Out {
    Out::Reply(s.to_owned())
}

fn login(tag: &str, user: &str, pass: &str) -> Out {
    Out::Login {
        tag: tag.to_owned(),
        user: user.to_owned(),
        pass: pass.to_owned(),
    }
}

fn caps() -> Vec<String> {
    ["IMAP4rev1", "SASL-IR", "AUTH=PLAIN", "AUTH=LOGIN"]
        .map(String::from)
        .to_vec()
}

fn strings(names: &str) -> Vec<String> {
    names.split(' ').map(String::from).collect()
}

fn b64(raw: &[u8]) -> String {
    B64.encode(raw)
}

/// Steps until the front end wants more bytes or closes; Login and
/// StartTls end a run so that a test can look at the buffer.
fn drive(fe: &mut Frontend, buf: &mut Vec<u8>) -> Vec<Out> {
    let mut outs = Vec::new();
    for _ in 0..10_000 {
        let Some(o) = out(fe.step(buf)) else {
            return outs;
        };
        let done = !matches!(o, Out::Reply(_));
        outs.push(o);
        if done {
            return outs;
        }
    }
    panic!("step never settled");
}

/// Feeds `chunks` one after the other and steps through everything
/// (past Login and StartTls, as a driver would after answering them).
/// Returns the actions and what is left in the buffer.
fn feed<'a>(fe: &mut Frontend, chunks: impl IntoIterator<Item = &'a [u8]>) -> (Vec<Out>, Vec<u8>) {
    let mut buf = Vec::new();
    let mut outs = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            let run = drive(fe, &mut buf);
            let last = run.last().cloned();
            outs.extend(run);
            match last {
                Some(Out::Close(_)) => return (outs, buf),
                Some(Out::StartTls(_)) => buf.clear(),
                Some(Out::Login { .. }) => {}
                _ => break,
            }
        }
    }
    (outs, buf)
}

fn session(input: &[u8]) -> Vec<Out> {
    feed(&mut Frontend::new(caps(), false), [input]).0
}

fn without_literal_continuations(outs: Vec<Out>) -> Vec<Out> {
    let continuation = Out::Reply(text(LITERAL_CONTINUATION));
    outs.into_iter().filter(|o| *o != continuation).collect()
}

fn literal(payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{{{}}}\r\n", payload.len()).into_bytes();
    out.extend_from_slice(payload);
    out
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

#[test]
fn login_forms() {
    let utf8_user = "jörg@contoso.com".as_bytes();
    let cases: Vec<(Vec<u8>, &str, &str)> = vec![
        (b"A1 LOGIN alice secret\r\n".to_vec(), "alice", "secret"),
        (b"A1 login alice@contoso.com s3cr3t!#&'\r\n".to_vec(), "alice@contoso.com", "s3cr3t!#&'"),
        (b"A1 LoGiN alice secret\n".to_vec(), "alice", "secret"),
        (br#"A1 LOGIN "alice@contoso.com" "pa ss\"wo\\rd""#.iter().chain(b"\r\n").copied().collect(), "alice@contoso.com", r#"pa ss"wo\rd"#),
        (b"A1 LOGIN \"al ice\" \"\"\r\n".to_vec(), "al ice", ""),
        (b"A1 LOGIN alice \"{5}\"\r\n".to_vec(), "alice", "{5}"),
        (b"A1 LOGIN ~alice p]w+\r\n".to_vec(), "~alice", "p]w+"),
        (b"A1 LOGIN {17}\r\nalice@contoso.com \"pw\"\r\n".to_vec(), "alice@contoso.com", "pw"),
        (b"A1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n".to_vec(), "alice", "secret"),
        (b"A1 LOGIN {5}\nalice {6}\nsecret\n".to_vec(), "alice", "secret"),
        (b"A1 LOGIN {5+}\r\nalice {7+}\r\nse cret\r\n".to_vec(), "alice", "se cret"),
        (b"A1 LOGIN {005}\r\nalice {6+}\r\nsecret\r\n".to_vec(), "alice", "secret"),
        (b"A1 LOGIN alice {8}\r\na\"b\r\nc d\r\n".to_vec(), "alice", "a\"b\r\nc d"),
        (b"A1 LOGIN alice {0}\r\n\r\n".to_vec(), "alice", ""),
        (b"A1 LOGIN \"alice\" {4}\r\n\\\"{}\r\n".to_vec(), "alice", "\\\"{}"),
        ("A1 LOGIN \"jörg@contoso.com\" \"pässwörd\"\r\n".as_bytes().to_vec(), "jörg@contoso.com", "pässwörd"),
        ("A1 LOGIN jörg pässwörd\r\n".as_bytes().to_vec(), "jörg", "pässwörd"),
        (join(&[b"A1 LOGIN ", &literal(utf8_user), b" ", &literal("p€ss 🔑".as_bytes()), b"\r\n"]), "jörg@contoso.com", "p€ss 🔑"),
        (b"x]y LOGIN alice secret\r\n".to_vec(), "alice", "secret"),
    ];
    for (input, user, pass) in cases {
        let tag = text(&input[..input.iter().position(|&b| b == b' ').unwrap()]);
        assert_eq!(
            session(&input),
            [login(&tag, user, pass)],
            "{}",
            text(&input)
        );
    }
}

#[test]
fn login_refusals() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"A1 LOGIN\r\n",
            "A1 BAD LOGIN expects a user name and a password\r\n",
        ),
        (
            b"A1 LOGIN alice\r\n",
            "A1 BAD LOGIN expects a user name and a password\r\n",
        ),
        (
            b"A1 LOGIN alice secret extra\r\n",
            "A1 BAD LOGIN expects a user name and a password\r\n",
        ),
        (
            b"A1 LOGIN alice secret \r\n",
            "A1 BAD LOGIN expects a user name and a password\r\n",
        ),
        (
            b"A1 LOGIN  alice secret\r\n",
            "A1 BAD Expected an atom, a quoted string or a literal\r\n",
        ),
        (
            b"A1 LOGIN (alice) secret\r\n",
            "A1 BAD Expected an atom, a quoted string or a literal\r\n",
        ),
        (
            b"A1 LOGIN alice \"se\\cret\"\r\n",
            "A1 BAD Only \\\" and \\\\ may be escaped in a quoted string\r\n",
        ),
        (
            b"A1 LOGIN alice \"secret\r\n",
            "A1 BAD Unterminated quoted string\r\n",
        ),
        (
            b"A1 LOGIN alice \"sec\rret\"\r\n",
            "A1 BAD Unterminated quoted string\r\n",
        ),
        (
            b"A1 LOGIN \"\" secret\r\n",
            "A1 BAD The user name is empty\r\n",
        ),
        (
            b"A1 LOGIN {0}\r\n secret\r\n",
            "A1 BAD The user name is empty\r\n",
        ),
        (
            b"A1 LOGIN \"al\tice\" secret\r\n",
            "A1 BAD The user name contains control characters\r\n",
        ),
        (
            b"A1 LOGIN {7}\r\nal\r\nice secret\r\n",
            "A1 BAD The user name contains control characters\r\n",
        ),
        (
            b"A1 LOGIN {6}\r\nal\x01ice secret\r\n",
            "A1 BAD The user name contains control characters\r\n",
        ),
        (
            b"A1 LOGIN alice \"sec\0ret\"\r\n",
            "A1 BAD NUL bytes are not allowed\r\n",
        ),
        (
            b"A1 LOGIN alice {3}\r\na\0b\r\n",
            "A1 BAD NUL bytes are not allowed\r\n",
        ),
        (
            b"A1 LOGIN {3}\r\n\xff\xfe\xfd secret\r\n",
            "A1 BAD The user name is not valid UTF-8\r\n",
        ),
        (
            b"A1 LOGIN alice {2}\r\n\xc3\x28\r\n",
            "A1 BAD The password is not valid UTF-8\r\n",
        ),
        (
            b"A1 LOGIN alice \xff\r\n",
            "A1 BAD The password is not valid UTF-8\r\n",
        ),
        (
            b"A1 LOGIN ~{5}\r\n",
            "A1 BAD literal8 is not accepted before login\r\n",
        ),
        (
            b"A1 LOGIN alice ~{2+}\r\nab\r\n",
            "A1 BAD literal8 is not accepted before login\r\n",
        ),
        (
            b"A1 LOGIN {5}x\r\n",
            "A1 BAD A literal's size must end the line\r\n",
        ),
        (b"A1 LOGIN {}\r\n", "A1 BAD Malformed literal\r\n"),
        (b"A1 LOGIN {5+-}\r\n", "A1 BAD Malformed literal\r\n"),
        (
            b"A1 LOGIN alice{3}\r\nabc\r\n",
            "A1 BAD LOGIN expects a user name and a password\r\n",
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(session(input), [reply(expected)], "{}", text(input));
    }
}

#[test]
fn refusals_never_quote_the_password() {
    for input in [
        &b"A1 LOGIN alice \"hunter2\\q\"\r\n"[..],
        b"A1 LOGIN alice hunter2 extra\r\n",
        b"A1 LOGIN alice {8}\r\nhunter2\xff\r\n",
        b"A1 AUTHENTICATE PLAIN hunter2!!\r\n",
    ] {
        for o in session(input) {
            assert!(!format!("{o:?}").contains("hunter2"), "{o:?}");
        }
    }
}

#[test]
fn debug_output_redacts_the_password() {
    let mut fe = Frontend::new(caps(), false);
    let mut buf = b"A1 LOGIN alice hunter2\r\n".to_vec();
    let action = fe.step(&mut buf);
    assert!(matches!(action, Action::Login { .. }));
    assert!(!format!("{action:?}").contains("hunter2"));
    assert!(!format!("{fe:?}").contains("hunter2"));
    assert!(buf.is_empty());
}

#[test]
fn synchronising_literals_get_one_continuation_each() {
    let mut fe = Frontend::new(caps(), false);
    let mut buf = b"A1 LOGIN {5}\r\n".to_vec();
    assert_eq!(
        drive(&mut fe, &mut buf),
        [reply("+ Ready for literal data\r\n")]
    );
    assert!(matches!(fe.step(&mut buf), Action::NeedMore));
    buf.extend_from_slice(b"ali");
    assert!(drive(&mut fe, &mut buf).is_empty());
    buf.extend_from_slice(b"ce {6}\r\n");
    assert_eq!(
        drive(&mut fe, &mut buf),
        [reply("+ Ready for literal data\r\n")]
    );
    assert!(drive(&mut fe, &mut buf).is_empty());
    buf.extend_from_slice(b"secret\r\nA2 NOOP\r\n");
    assert_eq!(drive(&mut fe, &mut buf), [login("A1", "alice", "secret")]);
    assert_eq!(buf, b"A2 NOOP\r\n");
    // The count starts again for the next command.
    buf = b"A3 LOGIN {5}\r\n".to_vec();
    assert_eq!(
        drive(&mut fe, &mut buf),
        [reply("+ Ready for literal data\r\n")]
    );
}

#[test]
fn non_synchronising_literals_get_no_continuation() {
    let mut fe = Frontend::new(caps(), false);
    let mut buf = b"A1 LOGIN {5+}\r\n".to_vec();
    assert!(drive(&mut fe, &mut buf).is_empty());
    buf.extend_from_slice(b"alice {6+}\r\n");
    assert!(drive(&mut fe, &mut buf).is_empty());
    buf.extend_from_slice(b"secret\r\n");
    assert_eq!(drive(&mut fe, &mut buf), [login("A1", "alice", "secret")]);
}

#[test]
fn literals_for_commands_that_cannot_use_them_are_refused_without_continuation() {
    let cases: &[(&[u8], &str)] = &[
        (
            b"A1 APPEND INBOX {5000}\r\n",
            "A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n",
        ),
        (
            b"A1 SELECT {5}\r\n",
            "A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n",
        ),
        (b"A1 NOOP {5}\r\n", "A1 BAD NOOP takes no arguments\r\n"),
        (
            b"A1 capability {5}\r\n",
            "A1 BAD CAPABILITY takes no arguments\r\n",
        ),
        (
            b"A1 AUTHENTICATE PLAIN {5}\r\n",
            "A1 BAD AUTHENTICATE arguments cannot be literals\r\n",
        ),
        (b"A1 {5}\r\n", "A1 BAD Missing command\r\n"),
        (
            b"A1 LOGIN~{5}\r\n",
            "A1 BAD literal8 is not accepted before login\r\n",
        ),
        (b"{5}\r\n", "* BAD Missing or invalid tag\r\n"),
    ];
    for (input, expected) in cases {
        let mut fe = Frontend::new(caps(), false);
        let mut buf = input.to_vec();
        assert_eq!(
            drive(&mut fe, &mut buf),
            [reply(expected)],
            "{}",
            text(input)
        );
        assert!(buf.is_empty());
    }
    assert_eq!(
        session(b"A1 SELECT {5+}\r\nINBOX\r\nA2 NOOP\r\n"),
        [
            reply("A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n"),
            reply("A2 OK NOOP completed\r\n"),
        ]
    );
}

#[test]
fn pipelined_bytes_stay_in_the_buffer() {
    let plain = b64(b"\0alice\0secret");
    let cases: Vec<(Vec<u8>, &[u8])> = vec![
        (
            b"A1 LOGIN alice secret\r\nA2 SELECT INBOX\r\n".to_vec(),
            b"A2 SELECT INBOX\r\n",
        ),
        (
            b"A1 LOGIN alice secret\r\nA2 APPEND INBOX {3+}\r\nabc\r\n".to_vec(),
            b"A2 APPEND INBOX {3+}\r\nabc\r\n",
        ),
        (b"A1 LOGIN {5+}\r\nalice secret\nA2 NO".to_vec(), b"A2 NO"),
        (
            format!("A1 AUTHENTICATE PLAIN {plain}\r\nA2 LIST \"\" *\r\n").into_bytes(),
            b"A2 LIST \"\" *\r\n",
        ),
        (
            format!("A1 AUTHENTICATE PLAIN\r\n{plain}\r\n\r\n").into_bytes(),
            b"\r\n",
        ),
        (
            b"A1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nA2 NOOP\r\n".to_vec(),
            b"A2 NOOP\r\n",
        ),
    ];
    for (input, rest) in cases {
        let mut fe = Frontend::new(caps(), false);
        let mut buf = input.clone();
        let outs = drive(&mut fe, &mut buf);
        assert_eq!(
            outs.last(),
            Some(&login("A1", "alice", "secret")),
            "{}",
            text(&input)
        );
        assert_eq!(buf, rest, "{}", text(&input));
    }
}

#[test]
fn simple_commands() {
    let log_in_first = "A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n";
    let id = "* ID (\"name\" \"xoauth2-proxy\")\r\nA1 OK ID completed\r\n";
    let cases: &[(&[u8], &str)] = &[
        (
            b"A1 CAPABILITY\r\n",
            "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN\r\nA1 OK CAPABILITY completed\r\n",
        ),
        (
            b"A1 capability\n",
            "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN\r\nA1 OK CAPABILITY completed\r\n",
        ),
        (b"A1 NOOP\r\n", "A1 OK NOOP completed\r\n"),
        (b"A1 nOoP\r\n", "A1 OK NOOP completed\r\n"),
        (b"A1 ID NIL\r\n", id),
        (b"A1 id nil\r\n", id),
        (b"A1 ID ()\r\n", id),
        (
            b"A1 ID (\"name\" \"Thunderbird\" \"version\" \"115.3\")\r\n",
            id,
        ),
        (b"A1 ID (\"name\" NIL \"os\" {5+}\r\nLinux)\r\n", id),
        (
            b"A1 ID (\"name\" {11}\r\nOutlook) \"x \"vendor\" \"Microsoft\")\r\n",
            id,
        ),
        (b"A1 ID (\"name\" \"a\\\"b\")\r\n", id),
        (
            b"A1 ID\r\n",
            "A1 BAD ID expects a parenthesised list or NIL\r\n",
        ),
        (
            b"A1 ID (\"name\" \"x\"\r\n",
            "A1 BAD ID expects a parenthesised list or NIL\r\n",
        ),
        (
            b"A1 ID (\"name\"  \"x\")\r\n",
            "A1 BAD Expected an atom, a quoted string or a literal\r\n",
        ),
        (
            b"A1 ID NILL\r\n",
            "A1 BAD ID expects a parenthesised list or NIL\r\n",
        ),
        (
            b"A1 ID () x\r\n",
            "A1 BAD ID expects a parenthesised list or NIL\r\n",
        ),
        (b"A1 SELECT INBOX\r\n", log_in_first),
        (b"A1 examine INBOX\r\n", log_in_first),
        (b"A1 LIST \"\" *\r\n", log_in_first),
        (b"A1 ENABLE UTF8=ACCEPT\r\n", log_in_first),
        (b"A1 FROBNICATE\r\n", log_in_first),
        (b"A1 NOOP extra\r\n", "A1 BAD NOOP takes no arguments\r\n"),
        (
            b"A1 CAPABILITY \r\n",
            "A1 BAD CAPABILITY takes no arguments\r\n",
        ),
        (b"A1 LOGOUT now\r\n", "A1 BAD LOGOUT takes no arguments\r\n"),
        (
            b"A1 STARTTLS\r\n",
            "A1 BAD STARTTLS is not offered here\r\n",
        ),
        (b"A1\r\n", "A1 BAD Missing command\r\n"),
        (b"A1 \r\n", "A1 BAD Missing command\r\n"),
        (b"A1 \"NOOP\"\r\n", "A1 BAD Missing command\r\n"),
        (b"A1 NO\"OP\r\n", "A1 BAD Invalid command name\r\n"),
        (b"A1 NOOP\0\r\n", "A1 BAD NUL bytes are not allowed\r\n"),
    ];
    for (input, expected) in cases {
        assert_eq!(session(input), [reply(expected)], "{}", text(input));
    }
}

#[test]
fn logout_closes() {
    assert_eq!(
        session(b"A1 LOGOUT\r\nA2 NOOP\r\n"),
        [Out::Close(
            "* BYE Logging out\r\nA1 OK LOGOUT completed\r\n".to_owned()
        )]
    );
    let mut fe = Frontend::new(caps(), false);
    let mut buf = b"A1 logout\r\n".to_vec();
    assert!(matches!(fe.step(&mut buf), Action::Close(_)));
    buf.extend_from_slice(b"A2 NOOP\r\n");
    assert!(matches!(fe.step(&mut buf), Action::Close(b) if b.is_empty()));
}

#[test]
fn tags_are_echoed_exactly_and_bad_tags_get_untagged_replies() {
    for tag in [
        "A1",
        "a1",
        "0",
        "x]y",
        "tag.with-punct!#$&'",
        "~T",
        "A=1",
        "\u{7e}z",
    ] {
        let input = format!("{tag} NOOP\r\n");
        assert_eq!(
            session(input.as_bytes()),
            [reply(&format!("{tag} OK NOOP completed\r\n"))]
        );
    }
    let cases: &[(&[u8], &str)] = &[
        (b"\r\n", "* BAD Empty command line\r\n"),
        (b"\n", "* BAD Empty command line\r\n"),
        (b" NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"+A NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"A+ NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"(A NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"A% NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"A* NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"\"A\" NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"A\\1 NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"\xc3\xa91 NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"\0 NOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"A1\tNOOP\r\n", "* BAD Missing or invalid tag\r\n"),
        (b"*\r\n", "* BAD Missing or invalid tag\r\n"),
    ];
    for (input, expected) in cases {
        assert_eq!(session(input), [reply(expected)], "{}", text(input));
    }
}

#[test]
fn starttls_when_offered() {
    let mut fe = Frontend::new(rewrite_capabilities(&caps(), true), true);
    let (outs, _) = feed(&mut fe, [&b"A0 CAPABILITY\r\n"[..]]);
    assert_eq!(
        outs,
        [reply(
            "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN STARTTLS\r\nA0 OK CAPABILITY completed\r\n"
        )]
    );
    let mut buf = b"A1 starttls\r\nA2 LOGIN injected pw\r\n".to_vec();
    assert_eq!(drive(&mut fe, &mut buf), [Out::StartTls("A1".to_owned())]);
    assert_eq!(
        buf, b"A2 LOGIN injected pw\r\n",
        "the driver discards these"
    );
    assert_eq!(starttls_ok("A1"), b"A1 OK Begin TLS negotiation now\r\n");
    let (outs, _) = feed(&mut fe, [&b"A3 CAPABILITY\r\nA4 STARTTLS\r\n"[..]]);
    assert_eq!(
        outs,
        [
            reply(
                "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN\r\nA3 OK CAPABILITY completed\r\n"
            ),
            reply("A4 BAD STARTTLS is not offered here\r\n"),
        ]
    );
}

#[test]
fn capability_list_is_filtered_and_replaceable() {
    let mut fe = Frontend::new(strings("IMAP4rev1 STARTTLS AUTH=PLAIN"), false);
    fe.set_capabilities(vec![
        "IMAP4rev1".into(),
        "IDLE".into(),
        "BAD NAME".into(),
        "X\r\n".into(),
        "starttls".into(),
    ]);
    let (outs, _) = feed(&mut fe, [&b"A1 CAPABILITY\r\n"[..]]);
    assert_eq!(
        outs,
        [reply(
            "* CAPABILITY IMAP4rev1 IDLE\r\nA1 OK CAPABILITY completed\r\n"
        )]
    );
}

#[test]
fn line_limit() {
    let mut fe = Frontend::new(caps(), false);
    let mut buf = vec![b'a'; MAX_LINE - 1];
    assert!(drive(&mut fe, &mut buf).is_empty());
    buf.push(b'a');
    assert_eq!(
        drive(&mut fe, &mut buf),
        [Out::Close(
            "* BYE [TOOBIG] Command line too long (limit 8192 bytes)\r\n".to_owned()
        )]
    );

    let mut exact = b"A1 X ".to_vec();
    exact.resize(MAX_LINE - 2, b'a');
    exact.extend_from_slice(b"\r\n");
    assert_eq!(
        session(&exact),
        [reply(
            "A1 BAD Log in first (LOGIN, or AUTHENTICATE PLAIN or LOGIN)\r\n"
        )]
    );
    exact.insert(5, b'a');
    assert!(matches!(session(&exact).as_slice(), [Out::Close(_)]));

    // Line bytes add up across the lines of one command.
    let mut chained = b"A1 ID (".to_vec();
    for _ in 0..1000 {
        chained.extend_from_slice(b"\"k\" {1+}\r\nv ");
    }
    assert!(matches!(session(&chained).as_slice(), [Out::Close(c)] if c.contains("TOOBIG")));

    let mut fe = Frontend::new(caps(), false);
    let mut buf = b"A1 AUTHENTICATE PLAIN\r\n".to_vec();
    assert_eq!(drive(&mut fe, &mut buf), [reply("+ \r\n")]);
    buf.resize(MAX_LINE, b'A');
    assert_eq!(
        drive(&mut fe, &mut buf),
        [Out::Close(
            "* BYE [TOOBIG] Response line too long (limit 8192 bytes)\r\n".to_owned()
        )]
    );
}

#[test]
fn literal_limits() {
    let big = format!("{}", MAX_LITERAL + 1);
    let too_big = "BAD [TOOBIG] Literal too large (limit 8192 bytes each, 16384 per command)\r\n";
    let sync_cases = [
        format!("A1 LOGIN {{{big}}}\r\n"),
        format!("A1 LOGIN alice {{{big}}}\r\n"),
        "A1 LOGIN {99999999999999999999999999999}\r\n".to_owned(),
    ];
    for input in sync_cases {
        let mut fe = Frontend::new(caps(), false);
        let mut buf = input.clone().into_bytes();
        assert_eq!(
            drive(&mut fe, &mut buf),
            [reply(&format!("A1 {too_big}"))],
            "{input}"
        );
        assert!(buf.is_empty());
        buf.extend_from_slice(b"A2 NOOP\r\n");
        assert_eq!(
            drive(&mut fe, &mut buf),
            [reply("A2 OK NOOP completed\r\n")]
        );
    }
    assert_eq!(
        session(format!("+x {{{big}}}\r\n").as_bytes()),
        [reply(&format!("* {too_big}"))]
    );

    let close = Out::Close(
        "* BYE [TOOBIG] Literal too large (limit 8192 bytes each, 16384 per command)\r\n"
            .to_owned(),
    );
    assert_eq!(
        session(format!("A1 LOGIN {{{big}+}}\r\n").as_bytes()),
        std::slice::from_ref(&close)
    );
    assert_eq!(
        session(b"A1 LOGIN alice {18446744073709551616+}\r\n"),
        std::slice::from_ref(&close)
    );

    let max = "a".repeat(MAX_LITERAL);
    let fits = format!("A1 LOGIN {{{MAX_LITERAL}+}}\r\n{max} {{{MAX_LITERAL}+}}\r\n{max}\r\n");
    assert_eq!(session(fits.as_bytes()), [login("A1", &max, &max)]);
    let over_total = format!(
        "A1 ID (\"a\" {{{MAX_LITERAL}+}}\r\n{max} \"b\" {{{MAX_LITERAL}+}}\r\n{max} \"c\" {{1+}}\r\n"
    );
    assert_eq!(session(over_total.as_bytes()), [close]);

    let mut fe = Frontend::new(caps(), false);
    let mut buf = format!("A1 LOGIN {{{MAX_LITERAL}}}\r\n").into_bytes();
    assert_eq!(
        drive(&mut fe, &mut buf),
        [reply("+ Ready for literal data\r\n")]
    );
}

/// The main forms, split at every position and fed byte by byte, give the
/// same actions as when fed at once (literal continuations aside: those
/// are only due when the client is actually waiting).
#[test]
fn failure_replies() {
    let cases = [
        (
            Failure::BadCredentials("Wrong password".into()),
            "A1 NO [AUTHENTICATIONFAILED] Wrong password\r\n",
        ),
        (
            Failure::SignInNeeded("Sign in at http://127.0.0.1:8080/".into()),
            "A1 NO [AUTHENTICATIONFAILED] Sign in at http://127.0.0.1:8080/\r\n",
        ),
        (
            Failure::Unavailable("Try again\r\nA2 OK injected".into()),
            "A1 NO [UNAVAILABLE] Try again  A2 OK injected\r\n",
        ),
        (
            Failure::BadCredentials(String::new()),
            "A1 NO [AUTHENTICATIONFAILED] Authentication failed\r\n",
        ),
        (
            Failure::Unavailable("\n".into()),
            "A1 NO [UNAVAILABLE] Service temporarily unavailable\r\n",
        ),
    ];
    for (failure, expected) in cases {
        assert_eq!(
            text(&failure_reply("A1", &failure)),
            expected,
            "{failure:?}"
        );
    }
}
