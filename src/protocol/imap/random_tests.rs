//! The front end under arbitrary splits and pseudo-random input.

use super::*;
use crate::protocol::test_random::XorShift;

#[test]
fn splitting_never_changes_the_result() {
    let plain = b64(b"\0alice@contoso.com\0secret");
    let inputs: Vec<Vec<u8>> = vec![
        b"A1 LOGIN alice@contoso.com secret\r\nA2 NOOP\r\n".to_vec(),
        b"A1 LOGIN \"alice\" \"se \\\"c\\\\ret\"\r\n".to_vec(),
        b"A1 LOGIN {17}\r\nalice@contoso.com {8}\r\nse\r\ncret\r\nA2 NOOP\r\n".to_vec(),
        b"A1 LOGIN {5+}\r\nalice {6+}\r\nsecret\nA2 SELECT INBOX\r\n".to_vec(),
        b"A1 LOGIN alice {0}\r\n\r\n".to_vec(),
        "A1 LOGIN \"jörg\" {10}\r\npässwörd\r\n".as_bytes().to_vec(),
        format!("A1 AUTHENTICATE PLAIN {plain}\r\nA2 NOOP\r\n").into_bytes(),
        format!("A1 AUTHENTICATE PLAIN\r\n{plain}\r\n").into_bytes(),
        b"A1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n".to_vec(),
        b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\nc2VjcmV0\nA2 NOOP\n".to_vec(),
        b"A1 AUTHENTICATE PLAIN\r\n*\r\nA2 ID (\"name\" {3}\r\nfoo)\r\nA3 LOGOUT\r\n".to_vec(),
        b"A0 CAPABILITY\r\nA1 LOGIN x\"y z\r\nA2 LOGIN {9999}\r\nA3 NOOP\r\n".to_vec(),
    ];
    for input in inputs {
        let whole = feed(&mut Frontend::new(caps(), false), [&input[..]]);
        assert!(
            whole
                .0
                .iter()
                .any(|o| !matches!(o, Out::Reply(r) if r.contains("BAD"))),
            "{whole:?}"
        );
        for at in 0..=input.len() {
            let (head, tail) = input.split_at(at);
            let (outs, rest) = feed(&mut Frontend::new(caps(), false), [head, tail]);
            assert_eq!(
                (without_literal_continuations(outs), rest),
                whole,
                "split at {at}: {}",
                text(&input)
            );
        }
        let (outs, rest) = feed(&mut Frontend::new(caps(), false), input.chunks(1));
        assert_eq!(
            (without_literal_continuations(outs), rest),
            whole,
            "{}",
            text(&input)
        );
    }
}

/// Every reply is ASCII lines ending in CRLF, with no stray CR or LF.
fn assert_well_formed(bytes: &[u8]) {
    assert!(bytes.is_ascii(), "{}", text(bytes));
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let body = line
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("{}", text(bytes)));
        assert!(!body.contains(&b'\r') && !body.contains(&b'\n'));
    }
}

fn random_pieces(rng: &mut XorShift, pieces: &[&[u8]], long_runs: bool) -> Vec<u8> {
    let mut input = Vec::new();
    for _ in 0..rng.below(60) {
        match rng.below(10) {
            0 => input.push(rng.next() as u8),
            1 if long_runs => input.extend(std::iter::repeat_n(b'x', rng.below(3 * MAX_LINE))),
            _ => input.extend_from_slice(pieces[rng.below(pieces.len())]),
        }
    }
    input
}

/// A few commands built from the grammar, so that mutations of them
/// reach the literal, quoting and SASL paths.
fn well_formed_session(rng: &mut XorShift) -> Vec<u8> {
    let mut input = Vec::new();
    for _ in 0..1 + rng.below(4) {
        input.extend_from_slice([&b"A1"[..], b"a.2", b"x]y"][rng.below(3)]);
        match rng.below(8) {
            0..=2 => {
                input.extend_from_slice(b" LOGIN ");
                random_astring(rng, &mut input);
                input.push(b' ');
                random_astring(rng, &mut input);
            }
            3 => {
                input.extend_from_slice(b" AUTHENTICATE PLAIN");
                let plain = b64(b"\0alice\0pw");
                if rng.below(2) == 0 {
                    input.push(b' ');
                } else {
                    input.extend_from_slice(b"\r\n");
                }
                input.extend_from_slice(plain.as_bytes());
            }
            4 => input.extend_from_slice(b" AUTHENTICATE LOGIN\r\nYWxpY2U=\r\ncHc="),
            5 => {
                input.extend_from_slice(b" ID (\"name\" ");
                random_astring(rng, &mut input);
                input.push(b')');
            }
            6 => input.extend_from_slice(
                [
                    &b" CAPABILITY"[..],
                    b" NOOP",
                    b" STARTTLS",
                    b" SELECT INBOX",
                ][rng.below(4)],
            ),
            _ => input.extend_from_slice(b" LOGOUT"),
        }
        input.extend_from_slice(if rng.below(4) == 0 { b"\n" } else { b"\r\n" });
    }
    input
}

fn random_astring(rng: &mut XorShift, out: &mut Vec<u8>) {
    let payload: Vec<u8> = (0..rng.below(12))
        .map(|_| b"ab \"\\\r\n{}\xc3\xa9"[rng.below(11)])
        .collect();
    match rng.below(4) {
        0 => out.extend_from_slice(b"alice@contoso.com"),
        1 => {
            out.push(b'"');
            for &b in &payload {
                if matches!(b, b'"' | b'\\') {
                    out.push(b'\\');
                }
                out.push(b);
            }
            out.push(b'"');
        }
        2 => out.extend(literal(&payload)),
        _ => {
            out.extend(format!("{{{}+}}\r\n", payload.len()).into_bytes());
            out.extend_from_slice(&payload);
        }
    }
}

#[test]
fn pseudo_random_input_never_panics_or_grows_the_buffer() {
    const PIECES: &[&[u8]] = &[
        b"A1 ",
        b"a.2 ",
        b"* ",
        b"+ ",
        b"LOGIN ",
        b"login ",
        b"AUTHENTICATE ",
        b"PLAIN",
        b"LOGIN",
        b"XOAUTH2",
        b"ID ",
        b"NIL",
        b"(",
        b")",
        b"CAPABILITY",
        b"NOOP",
        b"STARTTLS",
        b"LOGOUT",
        b"SELECT ",
        b"\"",
        b"\\",
        b"\\\"",
        b" ",
        b"\r\n",
        b"\n",
        b"\r",
        b"{",
        b"}",
        b"{3}\r\n",
        b"{0}\r\n",
        b"{5+}\r\n",
        b"~{2}\r\n",
        b"{8192}\r\n",
        b"{9000+}\r\n",
        b"{99999}\r\n",
        b"*\r\n",
        b"=",
        b"AGFsaWNlAHB3",
        b"YWxpY2U=",
        b"\0",
        b"\xff",
        b"\xc3\xa9",
        b"alice",
    ];
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let (mut logins, mut closes, mut replies) = (0, 0, 0);
    for case in 0..4000 {
        let mut input = if rng.below(3) == 0 {
            random_pieces(&mut rng, PIECES, case % 50 == 0)
        } else {
            well_formed_session(&mut rng)
        };
        for _ in 0..rng.below(3) {
            if !input.is_empty() {
                let at = rng.below(input.len());
                input[at] = rng.next() as u8;
            }
        }
        let mut fe = Frontend::new(caps(), rng.below(2) == 0);
        let mut buf = Vec::new();
        let mut pos = 0;
        'feed: while pos < input.len() {
            let take = 1 + rng.below(64.min(input.len() - pos));
            buf.extend_from_slice(&input[pos..pos + take]);
            pos += take;
            for _ in 0..10_000 {
                match fe.step(&mut buf) {
                    Action::NeedMore => {
                        assert!(
                            buf.len() <= MAX_COMMAND,
                            "case {case}: {} bytes buffered",
                            buf.len()
                        );
                        continue 'feed;
                    }
                    Action::Reply(bytes) => {
                        assert_well_formed(&bytes);
                        replies += 1;
                    }
                    Action::Close(bytes) => {
                        assert_well_formed(&bytes);
                        closes += 1;
                        break 'feed;
                    }
                    Action::StartTls { tag } => {
                        assert!(!tag.is_empty());
                        buf.clear();
                    }
                    Action::Login { tag, credentials } => {
                        assert!(!tag.is_empty());
                        assert!(!credentials.username.is_empty());
                        logins += 1;
                    }
                }
            }
            panic!("case {case}: step never settled");
        }
    }
    // The generator must reach deep states, not only refusals.
    assert!(
        logins > 500 && closes > 200 && replies > 3000,
        "{logins} {closes} {replies}"
    );
}
