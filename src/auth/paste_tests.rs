use std::io::Cursor;

use super::*;

fn url(text: &str) -> reqwest::Url {
    reqwest::Url::parse(text).unwrap()
}

fn code_of(p: &Pasted) -> &str {
    match &p.answer {
        Answer::Code(c) => c.expose_secret(),
        Answer::Denied(e) => panic!("denied: {e}"),
    }
}

#[test]
fn answers_at_the_redirect_address_are_taken() {
    let home = url(DEFAULT_REDIRECT_URI);
    let rows: &[(&str, &str, &str)] = &[
        ("http://localhost/?code=abc&state=st", "abc", "st"),
        // What a browser's address bar gives, and what a copy adds.
        ("  http://localhost/?code=abc&state=st \t", "abc", "st"),
        ("http://localhost?code=abc&state=st", "abc", "st"),
        ("HTTP://LOCALHOST/?code=abc&state=st", "abc", "st"),
        ("http://localhost:80/?code=abc&state=st", "abc", "st"),
        // Entra adds session_state (and sometimes client_info, iss): ignored.
        (
            "http://localhost/?code=0.AXk-x_y.z&state=st&session_state=0f1e-2d",
            "0.AXk-x_y.z",
            "st",
        ),
        ("http://localhost/?state=st&code=abc", "abc", "st"),
        // Percent-encoding is undone once.
        ("http://localhost/?code=a%2Fb%3D&state=s%2Bt", "a/b=", "s+t"),
        // A fragment is not the query: ignored.
        ("http://localhost/?code=abc&state=st#code=evil", "abc", "st"),
    ];
    for (line, code, state) in rows {
        let p = parse(line, &home).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(code_of(&p), *code, "{line}");
        assert_eq!(p.state, *state, "{line}");
        assert!(
            !format!("{p:?}").contains(code),
            "{line}: Debug shows the code"
        );
    }
    let own = url("https://login.microsoftonline.com/common/oauth2/nativeclient");
    let p = parse(
        "https://login.microsoftonline.com/common/oauth2/nativeclient?code=c&state=s",
        &own,
    )
    .unwrap();
    assert_eq!(code_of(&p), "c");
    let port = url("http://localhost:8400/callback");
    assert!(parse("http://localhost:8400/callback?code=c&state=s", &port).is_ok());
}

#[test]
fn hostile_and_mistaken_pastes_are_refused_without_echoing_them() {
    let home = url(DEFAULT_REDIRECT_URI);
    let elsewhere = |got: &str| PasteError::Elsewhere {
        expected: "http://localhost/".into(),
        got: got.into(),
    };
    let not_address = PasteError::NotAnAddress {
        expected: "http://localhost/".into(),
    };
    let long = format!(
        "http://localhost/?state=s&code={}",
        "x".repeat(MAX_PASTE_BYTES)
    );
    let rows: Vec<(&str, PasteError)> = vec![
        (
            "",
            PasteError::Empty {
                expected: "http://localhost/".into(),
            },
        ),
        (
            " \t ",
            PasteError::Empty {
                expected: "http://localhost/".into(),
            },
        ),
        // Not an address: the code alone, a password typed by mistake, junk.
        ("0.AXk-x_y.z", not_address.clone()),
        ("correct horse battery", not_address.clone()),
        ("localhost/?code=c&state=s", not_address.clone()),
        ("http://", not_address.clone()),
        ("\u{0}\u{1b}[31m", not_address.clone()),
        // Another place than the redirect URI.
        (
            "https://localhost/?code=c&state=s",
            elsewhere("https://localhost/"),
        ),
        (
            "http://127.0.0.1/?code=c&state=s",
            elsewhere("http://127.0.0.1/"),
        ),
        (
            "http://localhost:8080/?code=c&state=s",
            elsewhere("http://localhost:8080/"),
        ),
        (
            "http://localhost/callback?code=c&state=s",
            elsewhere("http://localhost/callback"),
        ),
        (
            "http://localhost.evil.example/?code=c&state=s",
            elsewhere("http://localhost.evil.example/"),
        ),
        (
            "http://evil.example/?code=c&state=s",
            elsewhere("http://evil.example/"),
        ),
        (
            "http://user:pw@localhost/?code=c&state=s",
            elsewhere("http://user@localhost/"),
        ),
        ("file:///etc/passwd", elsewhere("file:///etc/passwd")),
        ("javascript:alert(1)", elsewhere("javascript://alert(1)")),
        // The query: missing, repeated, contradictory.
        ("http://localhost/", PasteError::NoState),
        ("http://localhost/?code=c", PasteError::NoState),
        ("http://localhost/?code=c&state=", PasteError::NoState),
        ("http://localhost/?state=s", PasteError::NoCode),
        ("http://localhost/?state=s&code=", PasteError::NoCode),
        ("http://localhost/?state=s#code=c", PasteError::NoCode),
        (
            "http://localhost/?error_description=x&state=s",
            PasteError::NoCode,
        ),
        (
            "http://localhost/?code=a&code=b&state=s",
            PasteError::Repeated("code"),
        ),
        (
            "http://localhost/?code=a&state=s&state=t",
            PasteError::Repeated("state"),
        ),
        (
            "http://localhost/?error=a&error=b&state=s",
            PasteError::Repeated("error"),
        ),
        (
            "http://localhost/?code=a&error=access_denied&state=s",
            PasteError::CodeAndError,
        ),
        (&long, PasteError::TooLong),
    ];
    for (line, want) in &rows {
        let got = parse(line, &home).map(|_| ()).unwrap_err();
        assert_eq!(&got, want, "{line:?}");
        let text = got.to_string();
        assert!(
            !["code=c", "code=a", "state=s", "horse", "pw"]
                .iter()
                .any(|echo| text.contains(echo)),
            "{text}"
        );
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    // A hostile host or path is shown escaped and cut short.
    let trick = format!(
        "http://evil.example/\u{202e}{}?code=c&state=s",
        "a".repeat(500)
    );
    match parse(&trick, &home).unwrap_err() {
        PasteError::Elsewhere { got, .. } => {
            assert!(!got.contains('\u{202e}'), "{got}");
            assert!(got.chars().count() <= MAX_SHOWN + 1, "{}", got.len());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_refusal_is_shown_escaped() {
    let home = url(DEFAULT_REDIRECT_URI);
    let p = parse(
        "http://localhost/?error=access_denied&error_description=AADSTS65004%3A+User+declined\
         %0D%0A%1B%5B2J%E2%80%AEfake&state=st",
        &home,
    )
    .unwrap();
    assert_eq!(p.state, "st");
    let Answer::Denied(e) = p.answer else {
        panic!("not a refusal")
    };
    let text = e.to_string();
    assert!(
        text.contains("access_denied") && text.contains("AADSTS65004: User declined"),
        "{text}"
    );
    assert!(
        !text.chars().any(|c| c.is_control() || c == '\u{202e}'),
        "{text:?}"
    );
    assert!(text.contains("\\r\\n\\u{1b}[2J\\u{202e}fake"), "{text}");
}

#[test]
fn lines_are_read_capped() {
    let read = |bytes: &[u8]| read_line(&mut Cursor::new(bytes.to_vec()));
    assert_eq!(read(b"http://a/\n").unwrap().as_str(), "http://a/");
    assert_eq!(read(b"http://a/\r\nrest\n").unwrap().as_str(), "http://a/");
    assert_eq!(read(b"no newline").unwrap().as_str(), "no newline");
    assert_eq!(read(b"\n").unwrap().as_str(), "");
    assert_eq!(read(b"").unwrap_err(), PasteError::Ended);
    assert_eq!(read(b"\xff\xfe\n").unwrap_err(), PasteError::NotText);
    let exact = "x".repeat(MAX_PASTE_BYTES);
    assert_eq!(
        read(format!("{exact}\r\n").as_bytes()).unwrap().len(),
        MAX_PASTE_BYTES
    );
    assert_eq!(read(exact.as_bytes()).unwrap().len(), MAX_PASTE_BYTES);
    for over in [
        format!("{exact}x"),
        format!("{exact}x\n"),
        format!("{exact}\r\r\n"),
        "y".repeat(10 * MAX_PASTE_BYTES),
    ] {
        assert_eq!(read(over.as_bytes()).unwrap_err(), PasteError::TooLong);
    }
    // The second line follows the first; a too long line consumes at most its cap.
    let mut two = Cursor::new(b"first\nsecond\n".to_vec());
    assert_eq!(read_line(&mut two).unwrap().as_str(), "first");
    assert_eq!(read_line(&mut two).unwrap().as_str(), "second");
    assert_eq!(read_line(&mut two).unwrap_err(), PasteError::Ended);
    let mut big = Cursor::new("z".repeat(5 * MAX_PASTE_BYTES).into_bytes());
    assert_eq!(read_line(&mut big).unwrap_err(), PasteError::TooLong);
    assert_eq!(big.position(), MAX_PASTE_BYTES as u64 + 2);
}

#[test]
fn only_whole_line_mistakes_are_asked_again() {
    assert!(PasteError::NoCode.may_retry());
    assert!(PasteError::NotText.may_retry());
    assert!(!PasteError::TooLong.may_retry());
    assert!(!PasteError::Ended.may_retry());
    assert!(!PasteError::Read("x".into()).may_retry());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 300, ..Default::default() })]

    /// Whatever is pasted (arbitrary text, or text after the redirect
    /// address), `parse` answers without panicking, and a refusal never
    /// carries a control character or the pasted query.
    #[test]
    fn any_paste_gets_an_answer(
        tail in "[a-z=&?#%/:@.\\[\\]0-9\u{0}-\u{1f}\u{202e} ]{0,80}",
        raw in "\\PC{0,60}",
    ) {
        let home = url(DEFAULT_REDIRECT_URI);
        for line in [format!("http://localhost/{tail}"), raw.clone(), format!("http://localhost/?code=Q9&state=S7{tail}")] {
            match parse(&line, &home) {
                Ok(p) => proptest::prop_assert!(!p.state.is_empty()),
                Err(e) => {
                    let text = e.to_string();
                    proptest::prop_assert!(!text.chars().any(char::is_control), "{:?}", text);
                    proptest::prop_assert!(!text.contains("Q9") && !text.contains("S7"), "{}", text);
                }
            }
        }
    }
}
