//! Line framing shared by the line-based front ends (POP3, SMTP): find one
//! CRLF- or LF-terminated line under a cap, hand it over, then wipe it.
//! IMAP frames commands with literals and has its own framer.

use zeroize::Zeroize;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    Incomplete,
    TooLong,
    /// `len` octets of content, `consumed` including the line end.
    Line {
        len: usize,
        consumed: usize,
    },
}

/// Finds the first line; CRLF or a bare LF ends it. Looks no further than
/// `max_line + 2` octets, so a flood without line ends costs no rescans.
pub(crate) fn scan_line(buf: &[u8], max_line: usize) -> Scan {
    match buf.iter().take(max_line + 2).position(|&b| b == b'\n') {
        Some(lf) => {
            let len = if lf > 0 && buf.get(lf - 1) == Some(&b'\r') {
                lf - 1
            } else {
                lf
            };
            if len > max_line {
                Scan::TooLong
            } else {
                Scan::Line {
                    len,
                    consumed: lf + 1,
                }
            }
        }
        None if buf.len() > max_line + 1 => Scan::TooLong,
        None => Scan::Incomplete,
    }
}

/// What [`take_line`] found at the front of the buffer.
pub(crate) enum Taken<T> {
    /// No complete line yet; the buffer is untouched.
    Incomplete,
    /// The line passes the cap; the whole buffer has been wiped, since
    /// nothing in it can be trusted to start a command.
    TooLong,
    /// The line was handed to the callback (its result here) and removed.
    Line(T),
}

/// Hands the first line (without its line end) to `on_line`, then wipes and
/// removes it, so a password on it never outlives the call.
pub(crate) fn take_line<T>(
    buf: &mut Vec<u8>,
    max_line: usize,
    on_line: impl FnOnce(&[u8]) -> T,
) -> Taken<T> {
    match scan_line(buf, max_line) {
        Scan::Incomplete => Taken::Incomplete,
        Scan::TooLong => {
            discard(buf, buf.len());
            Taken::TooLong
        }
        Scan::Line { len, consumed } => {
            let out = on_line(buf.get(..len).unwrap_or_default());
            discard(buf, consumed);
            Taken::Line(out)
        }
    }
}

/// Wipes and removes the first `n` octets: a consumed line may have carried
/// a password, and `drain` alone would leave it in the spare capacity.
pub(crate) fn discard(buf: &mut Vec<u8>, n: usize) {
    let n = n.min(buf.len());
    if let Some(head) = buf.get_mut(..n) {
        head.zeroize();
    }
    buf.drain(..n);
}

/// Splits `VERB rest` at the first space. The rest is kept verbatim: a POP3
/// `PASS` argument is everything after exactly one space, and SMTP's
/// `MAIL FROM:<a>` only needs `MAIL` recognised.
pub(crate) fn split_verb(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(space) => (
            line.get(..space).unwrap_or_default(),
            line.get(space + 1..).unwrap_or_default(),
        ),
        None => (line, &[]),
    }
}

/// Capability and EHLO keywords compare case-insensitively (RFC 2449 §6,
/// RFC 5321 §2.4), so a list keeps the first spelling of each.
pub(crate) fn push_unique(out: &mut Vec<String>, line: String) {
    if !out.iter().any(|l| l.eq_ignore_ascii_case(&line)) {
        out.push(line);
    }
}

/// Why a STARTTLS (POP3's STLS) is refused.
pub(crate) enum TlsRefusal {
    NotOffered,
    Argument,
}

/// TLS is offered once (RFC 2595 §4, RFC 3207 §4.2: never again on the
/// upgraded connection) and the command takes no argument. `Ok` withdraws
/// the offer.
pub(crate) fn take_tls_offer(offered: &mut bool, arg: &[u8]) -> Result<(), TlsRefusal> {
    if !*offered {
        Err(TlsRefusal::NotOffered)
    } else if !arg.trim_ascii().is_empty() {
        Err(TlsRefusal::Argument)
    } else {
        *offered = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 8;

    #[test]
    fn scan_line_edges() {
        assert_eq!(scan_line(b"", CAP), Scan::Incomplete);
        assert_eq!(
            scan_line(b"\n", CAP),
            Scan::Line {
                len: 0,
                consumed: 1
            }
        );
        assert_eq!(
            scan_line(b"\r\n", CAP),
            Scan::Line {
                len: 0,
                consumed: 2
            }
        );
        assert_eq!(scan_line(b"\r", CAP), Scan::Incomplete);
        assert_eq!(
            scan_line(b"a\rb\n", CAP),
            Scan::Line {
                len: 3,
                consumed: 4
            }
        );
    }

    #[test]
    fn cap_counts_content_not_line_end() {
        assert_eq!(
            scan_line(b"12345678\r\n", CAP),
            Scan::Line {
                len: 8,
                consumed: 10
            }
        );
        assert_eq!(scan_line(b"123456789\r\n", CAP), Scan::TooLong);
        assert_eq!(scan_line(b"12345678\r", CAP), Scan::Incomplete);
        assert_eq!(scan_line(b"123456789\r", CAP), Scan::TooLong);
    }

    #[test]
    fn take_line_wipes_what_it_consumed() {
        let mut buf = b"PASS secret\r\nNEXT".to_vec();
        let taken = take_line(&mut buf, CAP * 4, <[u8]>::to_vec);
        assert!(matches!(taken, Taken::Line(ref l) if l == b"PASS secret"));
        assert_eq!(buf, b"NEXT");
        let mut long = vec![b'x'; CAP + 2];
        assert!(matches!(take_line(&mut long, CAP, |_| ()), Taken::TooLong));
        assert!(long.is_empty());
    }
}
