//! The IMAP pre-auth front end, fed arbitrary client bytes in arbitrary
//! reads, driven the way `session::imap` drives it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xoauth2_proxy::protocol::imap::{Action, Frontend, MAX_COMMAND, rewrite_capabilities};
use xoauth2_proxy_fuzz::{assert_lines, session};

fuzz_target!(|data: &[u8]| {
    let input = session(data);
    let upstream = ["IMAP4rev1", "SASL-IR", "AUTH=XOAUTH2", "LITERAL+", "ID"].map(String::from);
    let mut frontend = Frontend::new(
        rewrite_capabilities(&upstream, input.offer_tls),
        input.offer_tls,
    );
    let mut buf = Vec::new();
    'reads: for chunk in input.chunks {
        buf.extend_from_slice(chunk);
        for _ in 0..100_000 {
            match frontend.step(&mut buf) {
                Action::NeedMore => {
                    assert!(buf.len() <= MAX_COMMAND, "buffered {} bytes", buf.len());
                    continue 'reads;
                }
                Action::Reply(reply) => assert_lines(&reply),
                Action::Login { tag, credentials } => {
                    assert!(!tag.is_empty());
                    assert!(!credentials.username.is_empty());
                    assert!(!credentials.username.chars().any(char::is_control));
                }
                Action::StartTls { tag } => {
                    assert!(!tag.is_empty());
                    buf.clear();
                }
                Action::Close(reply) => {
                    if !reply.is_empty() {
                        assert_lines(&reply);
                    }
                    assert!(matches!(frontend.step(&mut buf), Action::Close(b) if b.is_empty()));
                    return;
                }
            }
        }
        panic!("step never asked for more bytes");
    }
});
