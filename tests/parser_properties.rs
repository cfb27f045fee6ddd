//! Property tests over the sans-IO pre-auth parsers: no input makes them
//! panic or buffer past their caps, however it is split into reads; and the
//! user name and password the IMAP front end takes from a LOGIN command are
//! exactly what an independent IMAP parser (`imap-codec`) reads from it.

use imap_codec::CommandCodec;
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use proptest::prelude::*;
use secrecy::ExposeSecret;
use xoauth2_proxy::protocol::{imap, pop3, smtp};
use xoauth2_proxy::sasl;

/// Bytes that look like client traffic: protocol words, line ends, literal
/// headers (some far over the caps), random bytes, and long runs of one byte
/// that push lines and literals past their limits.
fn client_bytes() -> impl Strategy<Value = Vec<u8>> {
    let words = prop::sample::select(vec![
        &b"A1 LOGIN "[..],
        b"a AUTHENTICATE PLAIN",
        b"a AUTHENTICATE LOGIN",
        b" ",
        b"\r\n",
        b"\n",
        b"\"",
        b"\\",
        b"{5}\r\n",
        b"{8192}\r\n",
        b"{8193+}\r\n",
        b"{99999999999999999999}\r\n",
        b"~{3}\r\n",
        b"{0+}\r\n",
        b"*\r\n",
        b"AGFsaWNlAHNlY3JldA==",
        b"USER alice\r\n",
        b"PASS secret\r\n",
        b"AUTH PLAIN ",
        b"AUTH LOGIN\r\n",
        b"EHLO client\r\n",
        b"BDAT 100000 LAST\r\n",
        b"BDAT 3\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"STARTTLS\r\n",
        b"STLS\r\n",
        b"CAPABILITY\r\n",
        b"\0",
    ]);
    let piece = prop_oneof![
        4 => words.prop_map(<[u8]>::to_vec),
        2 => prop::collection::vec(any::<u8>(), 0..64),
        1 => (any::<u8>(), 0usize..20_000).prop_map(|(b, n)| vec![b; n]),
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

/// Read sizes to cut the input into (cycled).
fn reads() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..8, 1usize..512, 1usize..40_000], 1..8)
}

/// Cuts `bytes` into reads, feeds each to `step` until it wants more, and
/// checks the cap on what stays buffered. `step` returns `None` for
/// NeedMore, `Some(true)` for a close, `Some(false)` for anything else (and
/// empties the buffer on STARTTLS itself).
fn drive(
    bytes: &[u8],
    reads: &[usize],
    cap: usize,
    mut step: impl FnMut(&mut Vec<u8>) -> Option<bool>,
) -> Result<(), TestCaseError> {
    let mut buf = Vec::new();
    let mut rest = bytes;
    let mut sizes = reads.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("reads is not empty")).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        let mut settled = false;
        for _ in 0..100_000 {
            match step(&mut buf) {
                None => {
                    prop_assert!(buf.len() <= cap, "{} bytes buffered, cap {cap}", buf.len());
                    settled = true;
                    break;
                }
                Some(true) => return Ok(()),
                Some(false) => {}
            }
        }
        prop_assert!(settled, "step never asked for more bytes");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, ..ProptestConfig::default() })]

    #[test]
    fn imap_front_end_never_panics_or_overbuffers(
        bytes in client_bytes(), reads in reads(), tls in any::<bool>(),
    ) {
        let caps = imap::rewrite_capabilities(&["IMAP4rev1".to_owned(), "LITERAL+".to_owned()], tls);
        let mut fe = imap::Frontend::new(caps, tls);
        drive(&bytes, &reads, imap::MAX_COMMAND, |buf| match fe.step(buf) {
            imap::Action::NeedMore => None,
            imap::Action::Close(_) => Some(true),
            imap::Action::StartTls { .. } => {
                buf.clear();
                Some(false)
            }
            _ => Some(false),
        })?;
    }

    #[test]
    fn pop3_front_end_never_panics_or_overbuffers(
        bytes in client_bytes(), reads in reads(), tls in any::<bool>(),
    ) {
        let mut fe = pop3::Frontend::new(pop3::rewrite_capa(&[], tls), tls);
        drive(&bytes, &reads, pop3::MAX_LINE + 1, |buf| match fe.step(buf) {
            pop3::Action::NeedMore => None,
            pop3::Action::Close(_) => Some(true),
            pop3::Action::StartTls => {
                buf.clear();
                Some(false)
            }
            _ => Some(false),
        })?;
    }

    #[test]
    fn smtp_front_end_never_panics_or_overbuffers(
        bytes in client_bytes(), reads in reads(), tls in any::<bool>(),
    ) {
        let mut fe = smtp::Frontend::new(tls);
        drive(&bytes, &reads, smtp::MAX_LINE + 1, |buf| {
            let _ = smtp::leading_mail_from(buf);
            match fe.step(buf) {
                smtp::Action::NeedMore => None,
                smtp::Action::Close(_) => Some(true),
                smtp::Action::StartTls => {
                    buf.clear();
                    Some(false)
                }
                _ => Some(false),
            }
        })?;
    }

    #[test]
    fn sasl_and_reply_parsers_never_panic(bytes in client_bytes()) {
        let _ = sasl::decode_plain(&bytes);
        let _ = sasl::decode_login_part(&bytes);
        let _ = sasl::decode_error_challenge(&bytes);
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let _ = imap::parse_server_line(line);
            let _ = imap::capabilities_in(line);
            let _ = pop3::parse_reply(line);
        }
        if let Ok(Some((_, used))) = smtp::parse_reply(&bytes) {
            prop_assert!(used <= bytes.len() && used <= smtp::MAX_REPLY);
        }
    }

    #[test]
    fn imap_login_extracts_what_imap_codec_extracts(
        tag in "[A-Za-z0-9.]{1,8}",
        user in astring(true),
        pass in astring(false),
    ) {
        let line = [
            format!("{tag} LOGIN ").into_bytes(),
            user.encoded.clone(),
            b" ".to_vec(),
            pass.encoded.clone(),
            b"\r\n".to_vec(),
        ]
        .concat();

        let (rest, command) = CommandCodec::default()
            .decode(&line)
            .map_err(|e| TestCaseError::fail(format!("imap-codec refused {line:?}: {e:?}")))?;
        prop_assert!(rest.is_empty());
        let CommandBody::Login { username, password } = command.body else {
            return Err(TestCaseError::fail("imap-codec did not read a LOGIN"));
        };
        prop_assert_eq!(username.as_ref(), user.value.as_bytes());
        prop_assert_eq!(password.declassify().as_ref(), pass.value.as_bytes());

        let mut fe = imap::Frontend::new(Vec::new(), false);
        let mut buf = line.clone();
        let mut login = None;
        for _ in 0..8 {
            match fe.step(&mut buf) {
                // The `+` for a synchronising literal; the bytes are all here.
                imap::Action::Reply(reply) if reply.starts_with(b"+ ") => {}
                imap::Action::Login { tag: got, credentials } => {
                    login = Some((got, credentials));
                    break;
                }
                other => return Err(TestCaseError::fail(format!("unexpected {other:?} for {line:?}"))),
            }
        }
        let (got_tag, credentials) = login.ok_or_else(|| TestCaseError::fail("no login"))?;
        prop_assert_eq!(got_tag, tag);
        prop_assert_eq!(credentials.username.as_bytes(), username.as_ref());
        prop_assert_eq!(
            credentials.password.expose_secret().as_bytes(),
            password.declassify().as_ref()
        );
        prop_assert!(buf.is_empty());
    }
}

/// An IMAP astring on the wire and the value it stands for.
#[derive(Debug, Clone)]
struct AStr {
    encoded: Vec<u8>,
    value: String,
}

/// Atoms, quoted strings (with `\"` and `\\` escapes) and literals (sync and
/// LITERAL+). A user name has no control characters (the proxy refuses those
/// before looking anything up); a password in a literal may hold CR and LF.
fn astring(is_user: bool) -> impl Strategy<Value = AStr> {
    let atom = "[A-Za-z0-9!#$&'+,./:;<=>?@^_`|~\\]-]{1,24}".prop_map(|s| AStr {
        encoded: s.clone().into_bytes(),
        value: s,
    });
    let quoted = "[ -~]{0,24}"
        .prop_filter("a user name is not empty", move |s| {
            !is_user || !s.is_empty()
        })
        .prop_map(|s| {
            let mut encoded = String::from("\"");
            for c in s.chars() {
                if c == '"' || c == '\\' {
                    encoded.push('\\');
                }
                encoded.push(c);
            }
            encoded.push('"');
            AStr {
                encoded: encoded.into_bytes(),
                value: s,
            }
        });
    let content = if is_user {
        "[^\\x00-\\x1f\\x7f-\\u{9f}]{1,24}"
    } else {
        "[^\\x00]{0,24}"
    };
    let literal = (content, any::<bool>()).prop_map(|(s, plus)| {
        let mut encoded =
            format!("{{{}{}}}\r\n", s.len(), if plus { "+" } else { "" }).into_bytes();
        encoded.extend_from_slice(s.as_bytes());
        AStr { encoded, value: s }
    });
    prop_oneof![atom, quoted, literal]
}
