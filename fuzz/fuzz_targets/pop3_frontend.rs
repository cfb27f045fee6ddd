//! The POP3 pre-auth front end, fed arbitrary client bytes in arbitrary
//! reads, driven the way `session::pop3` drives it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xoauth2_proxy::protocol::pop3::{Action, Frontend, MAX_LINE, rewrite_capa};
use xoauth2_proxy_fuzz::{assert_lines, session};

fuzz_target!(|data: &[u8]| {
    let input = session(data);
    let upstream = ["TOP", "UIDL", "SASL PLAIN XOAUTH2", "USER", "STLS"].map(String::from);
    let mut frontend = Frontend::new(rewrite_capa(&upstream, input.offer_tls), input.offer_tls);
    let mut buf = Vec::new();
    'reads: for chunk in input.chunks {
        buf.extend_from_slice(chunk);
        for _ in 0..100_000 {
            match frontend.step(&mut buf) {
                Action::NeedMore => {
                    assert!(buf.len() <= MAX_LINE + 1, "buffered {} bytes", buf.len());
                    continue 'reads;
                }
                Action::Reply(reply) => assert_lines(&reply),
                Action::Login { credentials } => {
                    assert!(!credentials.username.is_empty());
                }
                Action::StartTls => {
                    assert!(!frontend.offers_stls());
                    buf.clear();
                }
                Action::Close(reply) => {
                    assert_lines(&reply);
                    return;
                }
            }
        }
        panic!("step never asked for more bytes");
    }
});
