//! In-process fakes shared by the integration tests: a test PKI, a fake OAuth token endpoint,
//! fake Office-365-like IMAP/POP3/SMTP servers that speak SASL XOAUTH2, and a line-oriented
//! test client. Each test binary uses a subset, hence the module-wide `allow`.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod conn;
pub mod graph_server;
pub mod imap_server;
pub mod pki;
pub mod pop3_server;
pub mod proxies;
pub mod redis_server;
pub mod smtp_server;
pub mod token_server;

pub use client::TestClient;
pub use conn::{AbortOnDrop, ServerLog};
pub use imap_server::{FakeImapServer, ImapOpts, ImapState, Tls};
pub use pki::TestPki;
pub use pop3_server::{FakePop3Server, Pop3Opts, Pop3State};
pub use smtp_server::{FakeSmtpServer, ReceivedMail, SmtpAuthReply, SmtpOpts, SmtpState};
pub use token_server::{FakeTokenServer, Mode, TokenState};

use base64::Engine as _;

/// The mailbox every fake uses unless a test says otherwise.
pub const USER: &str = "user@example.test";

/// Base64 of the SASL XOAUTH2 string for `user` and `token`:
/// `user=<user>\x01auth=Bearer <token>\x01\x01`.
pub fn xoauth2(user: &str, token: &str) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(format!("user={user}\x01auth=Bearer {token}\x01\x01"))
}

/// The tokens a sign-in stored for `user` under `state_dir`, opened with
/// `password` (they are sealed from their first write; `None` if absent).
pub fn open_stored(
    state_dir: &std::path::Path,
    user: &str,
    password: &str,
) -> Option<xoauth2_proxy::auth::vault::StoredTokens> {
    use xoauth2_proxy::auth::password::SealKey;
    use xoauth2_proxy::auth::vault::{Entry, TokenStore};
    match TokenStore::new(state_dir)
        .load_entry(user)
        .expect("a readable store")?
    {
        Entry::Sealed(s) => {
            let key = SealKey::derive(password.as_bytes(), s.params(), s.salt()).unwrap();
            Some(s.open(&key).expect("sealed with the chosen password"))
        }
        Entry::Unsealed(_) => panic!("stored unsealed"),
    }
}

/// The JSON error challenge Dovecot (and Google) send before refusing a token, base64-encoded.
pub const ERROR_CHALLENGE_JSON: &str = r#"{"status":"401","schemes":"bearer","scope":"mail"}"#;

pub fn error_challenge_b64() -> String {
    base64::engine::general_purpose::STANDARD.encode(ERROR_CHALLENGE_JSON)
}

/// Dot-stuffs `body` for POP3 RETR / SMTP DATA (a '.' at the start of a line gets doubled) and
/// appends the `.CRLF` terminator (preceded by a CRLF if the body does not end with one).
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// Reverses [`dot_stuff`] on a complete dot-terminated block (terminator included).
/// Panics if the terminator is missing.
pub fn dot_unstuff(stuffed: &[u8]) -> Vec<u8> {
    let body = if stuffed == b".\r\n" {
        &stuffed[..0]
    } else {
        stuffed
            .strip_suffix(b"\r\n.\r\n")
            .map(|b| &stuffed[..b.len() + 2])
            .unwrap_or_else(|| panic!("dot_unstuff: block does not end with CRLF.CRLF"))
    };
    let mut out = Vec::with_capacity(body.len());
    let mut at_line_start = true;
    for &b in body {
        if !(at_line_start && b == b'.') {
            out.push(b);
        }
        at_line_start = b == b'\n';
    }
    out
}

/// A deterministic RFC 5322-looking message of exactly `size` bytes with CRLF line ends.
/// The body mixes plain ASCII lines with lines that start with '.', lines that are a single
/// '.', empty lines and lines with 8-bit bytes (UTF-8 and raw 0x80..=0xFF), so dot-stuffing and
/// 8-bit paths get exercised. Lines never contain a bare CR or LF. Sizes below ~200 bytes give
/// a run of 'x' lines instead of headers.
pub fn message(size: usize, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix(seed ^ 0x5EED_0F7E_5700);
    let headers = format!(
        "From: Test Sender <sender@example.test>\r\n\
         To: Test Recipient <{USER}>\r\n\
         Subject: test message {seed} of {size} bytes\r\n\
         Message-ID: <{seed}.{size}@example.test>\r\n\
         Date: Mon, 1 Jan 2024 00:00:00 +0000\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n"
    );
    let mut out = Vec::with_capacity(size);
    if size < headers.len() + 8 {
        while out.len() < size {
            let left = size - out.len();
            if left == 1 {
                out.push(b'x');
            } else {
                let n = (left - 2).min(70);
                out.extend(std::iter::repeat_n(b'x', n));
                out.extend_from_slice(b"\r\n");
            }
        }
        return out;
    }
    out.extend_from_slice(headers.as_bytes());
    let mut line_no = 0u64;
    let mut line = Vec::with_capacity(100);
    loop {
        let remaining = size - out.len();
        if remaining == 0 {
            break;
        }
        line.clear();
        body_line(&mut rng, line_no, &mut line);
        line_no += 1;
        let full = line.len() + 2;
        if full <= remaining && remaining - full >= 3 {
            out.extend_from_slice(&line);
            out.extend_from_slice(b"\r\n");
            continue;
        }
        // Last line: pad or cut it so the message ends exactly at `size` with a CRLF.
        line.resize(remaining - 2, b'z');
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
        break;
    }
    debug_assert_eq!(out.len(), size);
    out
}

fn body_line(rng: &mut SplitMix, line_no: u64, line: &mut Vec<u8>) {
    const WORDS: &[&str] = &[
        "lorem", "ipsum", "dolor", "sit", "amet", "mail", "proxy", "token", "refresh", "bearer",
        "xoauth2", "imap", "pop3", "smtp", "relay", "bytes", "exact", "From", "Subject:",
    ];
    match rng.next() % 12 {
        0 => line.push(b'.'),
        1 => line.extend_from_slice(format!(".leading dot line {line_no}").as_bytes()),
        2 => line.extend_from_slice(b".."),
        3 => line.extend_from_slice(format!("..double dot {line_no}").as_bytes()),
        4 => {
            line.extend_from_slice("caf\u{e9} na\u{ef}ve \u{20ac} \u{1f4e7} ".as_bytes());
            for _ in 0..(rng.next() % 24) {
                line.push(0x80 | (rng.next() as u8 & 0x7f));
            }
        }
        5 => {}
        _ => {
            let target = 20 + (rng.next() % 57) as usize;
            while line.len() < target {
                if !line.is_empty() {
                    line.push(b' ');
                }
                line.extend_from_slice(
                    WORDS[(rng.next() % WORDS.len() as u64) as usize].as_bytes(),
                );
            }
        }
    }
}

struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
