//! Parsing of what the upstream server says before authentication: IMAP
//! response lines and capability lists, POP3 status lines, SMTP replies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xoauth2_proxy::protocol::{imap, pop3, smtp};

fuzz_target!(|data: &[u8]| {
    for line in data.split_inclusive(|&b| b == b'\n') {
        if let Some(imap::ServerLine::Tagged { tag, .. }) = imap::parse_server_line(line) {
            assert!(!tag.is_empty());
        }
        if let Some(names) = imap::capabilities_in(line) {
            assert!(names.iter().all(|n| !n.is_empty() && !n.contains(' ')));
        }
        let _ = pop3::parse_reply(line);
    }
    let mut rest = data;
    while let Ok(Some((reply, used))) = smtp::parse_reply(rest) {
        assert!(used > 0 && used <= rest.len());
        assert!((100..600).contains(&reply.code));
        assert!(!reply.lines.is_empty());
        rest = &rest[used..];
    }
    if rest.len() > smtp::MAX_REPLY && !rest[..smtp::MAX_REPLY].contains(&b'\n') {
        assert!(smtp::parse_reply(rest).is_err());
    }
});
