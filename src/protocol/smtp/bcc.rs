//! Envelope recipients into a message's header for a backend that reads
//! recipients from the header (Microsoft Graph's `sendMail` with MIME).
//!
//! SMTP delivers to the envelope's `RCPT TO` addresses; Graph delivers to
//! the `To`, `Cc` and `Bcc` of the message. An envelope recipient that is in
//! none of them (a blind copy the client kept out of the header, as clients
//! do) is added to `Bcc` (Graph strips Bcc on delivery). Nothing else
//! changes: the message is the client's byte for byte around the insertion.
//!
//! The header's addresses are read with `mailparse` (folding, groups,
//! comments, quoted strings, encoded words).

use mailparse::{MailAddr, addrparse_header, parse_headers};

/// Longest line the inserted `Bcc` field writes before it folds (RFC 5322
/// §2.1.1 recommends 78 characters).
const FOLD_AT: usize = 78;

/// The message with every recipient that its `To`/`Cc`/`Bcc` do not name
/// added to `Bcc` (to the existing field, or a new one at the top). A
/// header that cannot be parsed names no one: every recipient is added.
pub fn add_missing_bcc(message: &[u8], recipients: &[String]) -> Vec<u8> {
    let named = named_recipients(message);
    let missing: Vec<&String> = recipients
        .iter()
        .filter(|r| !named.iter().any(|n| n.eq_ignore_ascii_case(r)))
        .collect();
    if missing.is_empty() {
        return message.to_vec();
    }
    let eol: &[u8] = if first_line_is_crlf(message) {
        b"\r\n"
    } else {
        b"\n"
    };
    let mut out = Vec::with_capacity(message.len() + 64 * missing.len());
    match existing_bcc(message) {
        Some(bcc) => {
            let (head, tail) = message.split_at(bcc.insert_at);
            out.extend_from_slice(head);
            let mut column = bcc.last_line_len;
            for (i, address) in missing.iter().enumerate() {
                let first = i == 0 && bcc.empty;
                push_address(&mut out, &mut column, address, first, eol);
            }
            out.extend_from_slice(tail);
        }
        None => {
            out.extend_from_slice(b"Bcc:");
            let mut column = 4;
            for (i, address) in missing.iter().enumerate() {
                push_address(&mut out, &mut column, address, i == 0, eol);
            }
            out.extend_from_slice(eol);
            out.extend_from_slice(message);
        }
    }
    out
}

/// Appends ` <address>` (after a comma unless `first`), folding before it
/// when the line would pass [`FOLD_AT`].
fn push_address(out: &mut Vec<u8>, column: &mut usize, address: &str, first: bool, eol: &[u8]) {
    if !first {
        out.push(b',');
        *column += 1;
    }
    let item = format!(" <{address}>");
    if *column + item.len() > FOLD_AT && *column > 4 {
        out.extend_from_slice(eol);
        *column = 0;
    }
    out.extend_from_slice(item.as_bytes());
    *column += item.len();
}

/// Every address in the `To`, `Cc` and `Bcc` fields (groups opened).
fn named_recipients(message: &[u8]) -> Vec<String> {
    let Ok((headers, _)) = parse_headers(message) else {
        return Vec::new();
    };
    let mut named = Vec::new();
    for header in &headers {
        let key = header.get_key();
        if !["to", "cc", "bcc"]
            .iter()
            .any(|k| key.eq_ignore_ascii_case(k))
        {
            continue;
        }
        let Ok(list) = addrparse_header(header) else {
            continue;
        };
        for addr in list.iter() {
            match addr {
                MailAddr::Single(single) => named.push(single.addr.clone()),
                MailAddr::Group(group) => {
                    named.extend(group.addrs.iter().map(|s| s.addr.clone()));
                }
            }
        }
    }
    named
}

fn first_line_is_crlf(message: &[u8]) -> bool {
    match message.iter().position(|&b| b == b'\n') {
        Some(lf) => lf > 0 && message.get(lf - 1) == Some(&b'\r'),
        None => true,
    }
}

/// Where the message's own `Bcc` field ends.
struct ExistingBcc {
    /// Before the line end of the field's last line.
    insert_at: usize,
    /// The field has no addresses yet (`Bcc:` alone).
    empty: bool,
    /// Length of the field's last line, for folding.
    last_line_len: usize,
}

/// The first `Bcc` field of the header section, if any.
fn existing_bcc(message: &[u8]) -> Option<ExistingBcc> {
    let mut pos = 0;
    let mut found: Option<(usize, usize)> = None; // (value start, last line start)
    while pos < message.len() {
        let rest = message.get(pos..)?;
        let line_len = rest
            .iter()
            .position(|&b| b == b'\n')
            .map_or(rest.len(), |i| i + 1);
        let line = rest.get(..line_len)?;
        let content = line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .unwrap_or(line);
        let continues = matches!(content.first(), Some(b' ' | b'\t'));
        if let Some((value_start, _)) = found {
            if continues {
                found = Some((value_start, pos));
            } else {
                break;
            }
        } else if content.is_empty() {
            return None; // end of the header section
        } else if content.len() >= 4 && content.get(..4)?.eq_ignore_ascii_case(b"bcc:") {
            found = Some((pos + 4, pos));
        }
        pos += line_len;
    }
    let (value_start, last_start) = found?;
    let last = message.get(last_start..)?;
    let last_len = last.iter().position(|&b| b == b'\n').unwrap_or(last.len());
    let mut insert_at = last_start + last_len;
    if insert_at > last_start && message.get(insert_at - 1) == Some(&b'\r') {
        insert_at -= 1;
    }
    let value = message.get(value_start..insert_at)?;
    Some(ExistingBcc {
        insert_at,
        empty: value.iter().all(u8::is_ascii_whitespace),
        last_line_len: insert_at - last_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(message: &str, recipients: &[&str]) -> String {
        let recipients: Vec<String> = recipients.iter().map(|r| r.to_string()).collect();
        String::from_utf8(add_missing_bcc(message.as_bytes(), &recipients)).unwrap()
    }

    #[test]
    fn recipients_named_in_the_header_change_nothing() {
        let cases = [
            ("To: a@x.test\r\n\r\nbody\r\n", vec!["a@x.test"]),
            ("To: \"A, B\" <A@X.test>\r\n\r\nbody\r\n", vec!["a@x.test"]),
            ("Cc: Bee (work) <b@x.test>\r\n\r\n", vec!["b@x.test"]),
            ("To: friends: a@x.test, b@x.test;\r\n\r\n", vec!["b@x.test"]),
            (
                "To: =?utf-8?q?J=C3=B6rg?= <j@x.test>\r\n\r\n",
                vec!["j@x.test"],
            ),
            ("To: a@x.test,\r\n b@x.test\r\n\r\n", vec!["b@x.test"]),
            ("bcc: c@x.test\r\n\r\n", vec!["c@x.test"]),
        ];
        for (message, recipients) in cases {
            assert_eq!(add(message, &recipients), message, "{message:?}");
        }
    }

    #[test]
    fn a_missing_recipient_goes_into_a_new_bcc_at_the_top() {
        let message = "From: s@x.test\r\nTo: a@x.test\r\n\r\nbody\r\n";
        assert_eq!(
            add(message, &["a@x.test", "hidden@y.test"]),
            format!("Bcc: <hidden@y.test>\r\n{message}")
        );
        // A bare-LF message gets a bare-LF field.
        assert_eq!(
            add("To: a@x.test\n\nb\n", &["z@y.test"]),
            "Bcc: <z@y.test>\nTo: a@x.test\n\nb\n"
        );
    }

    #[test]
    fn a_missing_recipient_joins_an_existing_bcc() {
        assert_eq!(
            add(
                "Bcc: c@x.test\r\nTo: a@x.test\r\n\r\n",
                &["a@x.test", "d@y.test"]
            ),
            "Bcc: c@x.test, <d@y.test>\r\nTo: a@x.test\r\n\r\n"
        );
        assert_eq!(
            add("To: a@x.test\r\nBCC:\r\n\r\n", &["d@y.test"]),
            "To: a@x.test\r\nBCC: <d@y.test>\r\n\r\n"
        );
        assert_eq!(
            add("Bcc: c@x.test,\r\n e@x.test\r\n\r\nx", &["d@y.test"]),
            "Bcc: c@x.test,\r\n e@x.test, <d@y.test>\r\n\r\nx"
        );
    }

    #[test]
    fn a_bcc_in_the_body_is_not_the_header() {
        let message = "To: a@x.test\r\n\r\nBcc: z@y.test\r\n";
        assert_eq!(
            add(message, &["z@y.test"]),
            format!("Bcc: <z@y.test>\r\n{message}")
        );
    }

    #[test]
    fn many_recipients_fold_the_field() {
        let recipients: Vec<String> = (0..20).map(|i| format!("r{i}@example.test")).collect();
        let refs: Vec<&str> = recipients.iter().map(String::as_str).collect();
        let out = add("Subject: s\r\n\r\n", &refs);
        assert!(out.lines().all(|l| l.len() <= FOLD_AT), "{out}");
        let (headers, _) = parse_headers(out.as_bytes()).unwrap();
        let list = addrparse_header(&headers[0]).unwrap();
        assert_eq!(list.len(), 20);
    }
}
