//! The fixed-account relay's filter, fed arbitrary client bytes in arbitrary
//! reads, against a server that answers every command it receives (354 to
//! DATA). What goes up must be canonical (every CR and LF in a CRLF) and no
//! command the server reads may name a sender outside `allowed_senders`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xoauth2_proxy::protocol::smtp::filter::{Filter, Output, Policy};
use xoauth2_proxy_fuzz::session;

const SENDER: &str = "scanner@contoso.com";

fuzz_target!(|data: &[u8]| {
    let input = session(data);
    let mut filter = Filter::new(Policy {
        allowed_senders: vec![SENDER.to_owned()],
        max_recipients: 3,
    });
    let mut out = Output::default();
    let mut server = Server::default();
    for chunk in input.chunks {
        if !filter.wants_client() {
            break;
        }
        filter.from_client(chunk, &mut out);
        // Answer until nothing new goes up (answers may release held bytes).
        loop {
            let sent = std::mem::take(&mut out.to_server);
            if sent.is_empty() {
                break;
            }
            for reply in server.read(&sent) {
                filter
                    .from_server(reply, &mut out)
                    .expect("well-formed replies");
            }
        }
        out.to_client.clear();
        out.events.clear();
    }
});

/// What the server reads: commands, and message text after a 354.
#[derive(Default)]
struct Server {
    line: Vec<u8>,
    in_data: bool,
}

impl Server {
    fn read(&mut self, bytes: &[u8]) -> Vec<&'static [u8]> {
        let mut replies = Vec::new();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(bytes.get(i + 1), Some(&b'\n'), "a bare CR went up");
            }
            self.line.push(b);
            if b != b'\n' {
                continue;
            }
            assert!(self.line.ends_with(b"\r\n"), "a bare LF went up");
            let line = std::mem::take(&mut self.line);
            if self.in_data {
                if line == b".\r\n" {
                    self.in_data = false;
                    replies.push(&b"250 2.6.0 Queued\r\n"[..]);
                }
                continue;
            }
            let upper = line.to_ascii_uppercase();
            if upper.starts_with(b"MAIL") {
                // The mailbox between the brackets (after a source route).
                let open = upper.iter().position(|&b| b == b'<').expect("a path");
                let close = upper.iter().position(|&b| b == b'>').expect("a path");
                let path = &upper[open + 1..close];
                let mailbox = match path.iter().rposition(|&b| b == b':') {
                    Some(colon) if path.starts_with(b"@") => &path[colon + 1..],
                    _ => path,
                };
                assert_eq!(mailbox, SENDER.to_ascii_uppercase().as_bytes(), "{line:?}");
            }
            if upper == b"DATA\r\n" {
                self.in_data = true;
                replies.push(&b"354 go ahead\r\n"[..]);
            } else {
                replies.push(&b"250 2.0.0 OK\r\n"[..]);
            }
        }
        replies
    }
}
