//! The SMTP pre-auth front end, fed arbitrary client bytes in arbitrary
//! reads, driven the way `session::smtp` drives it (including the
//! fixed-account relay's look at a leading MAIL FROM).
#![no_main]

use libfuzzer_sys::fuzz_target;
use xoauth2_proxy::protocol::smtp::{
    Action, EhloOffer, Frontend, MAX_LINE, ehlo_reply, leading_mail_from,
};
use xoauth2_proxy_fuzz::{assert_lines, session};

fuzz_target!(|data: &[u8]| {
    let input = session(data);
    let upstream = [
        "outlook.office365.com Hello",
        "SIZE 157286400",
        "AUTH LOGIN XOAUTH2",
        "STARTTLS",
    ]
    .map(String::from);
    let mut frontend = Frontend::new(input.offer_tls);
    let mut buf = Vec::new();
    'reads: for chunk in input.chunks {
        buf.extend_from_slice(chunk);
        if let Some(mail) = leading_mail_from(&buf) {
            assert!(mail.consumed <= buf.len());
        }
        for _ in 0..100_000 {
            match frontend.step(&mut buf) {
                Action::NeedMore => {
                    assert!(buf.len() <= MAX_LINE + 1, "buffered {} bytes", buf.len());
                    continue 'reads;
                }
                Action::Reply(reply) => assert_lines(&reply),
                Action::Ehlo { domain, extended } => {
                    assert!(!domain.contains(['\r', '\n']));
                    assert_lines(&ehlo_reply(
                        &upstream,
                        extended,
                        EhloOffer::login(frontend.offers_starttls()),
                    ));
                }
                Action::Login { credentials } => {
                    assert!(!credentials.username.is_empty());
                }
                Action::StartTls => {
                    assert!(!frontend.offers_starttls());
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
