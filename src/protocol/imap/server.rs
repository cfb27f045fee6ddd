//! The upstream's side of IMAP before login: its capability list rewritten
//! for the client, the greeting, and the few server lines the driver has to
//! understand (tagged status, untagged data, continuations).

use super::{
    is_astring_char, is_atom_char, starts_with_ignore_case, strip_prefix_ignore_case, trim_eol,
};

/// Rewrites an upstream pre-auth capability list. The proxy owns everything
/// about logging in and about local TLS, so the upstream's AUTH= mechanisms,
/// LOGINDISABLED and STARTTLS are replaced by what the proxy itself accepts.
/// Order is kept (IMAP4rev1 first), duplicates and names that are not atoms
/// are dropped, comparisons ignore case.
pub fn rewrite_capabilities(upstream: &[String], offer_starttls: bool) -> Vec<String> {
    let mut out = vec!["IMAP4rev1".to_owned()];
    for name in upstream {
        let owned_by_proxy = starts_with_ignore_case(name.as_bytes(), b"AUTH=")
            || name.eq_ignore_ascii_case("LOGINDISABLED")
            || name.eq_ignore_ascii_case("STARTTLS");
        let seen = out.iter().any(|n| n.eq_ignore_ascii_case(name));
        if is_capability_name(name) && !owned_by_proxy && !seen {
            out.push(name.clone());
        }
    }
    out.push("AUTH=PLAIN".to_owned());
    out.push("AUTH=LOGIN".to_owned());
    if offer_starttls {
        out.push("STARTTLS".to_owned());
    }
    out
}

/// The capabilities offered before STARTTLS where a password in the clear
/// would be refused: no `AUTH=` mechanism, and `LOGINDISABLED` (RFC 3501
/// §6.2.3, RFC 9051 §6.2.3), so a client goes to STARTTLS instead of
/// sending its password first and hearing `PRIVACYREQUIRED` after.
pub fn without_logins(capabilities: &[String]) -> Vec<String> {
    let mut out: Vec<String> = capabilities
        .iter()
        .filter(|c| {
            !starts_with_ignore_case(c.as_bytes(), b"AUTH=")
                && !c.eq_ignore_ascii_case("LOGINDISABLED")
        })
        .cloned()
        .collect();
    out.push("LOGINDISABLED".to_owned());
    out
}

/// One server response line, split the way the driver needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerLine<'a> {
    /// What follows `* `.
    Untagged(&'a [u8]),
    /// What follows `+` and an optional space.
    Continuation(&'a [u8]),
    /// `text` is everything after the status word and its space, response
    /// codes included.
    Tagged {
        tag: &'a [u8],
        status: Status,
        text: &'a [u8],
    },
}

/// Status words of IMAP responses (BYE and PREAUTH only occur untagged, but
/// one enum keeps the driver simple).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    No,
    Bad,
    Bye,
    PreAuth,
}

impl Status {
    fn from_word(word: &[u8]) -> Option<Status> {
        const WORDS: [(&[u8], Status); 5] = [
            (b"OK", Status::Ok),
            (b"NO", Status::No),
            (b"BAD", Status::Bad),
            (b"BYE", Status::Bye),
            (b"PREAUTH", Status::PreAuth),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map(|&(_, status)| status)
    }
}

/// Parses a server response line (with or without its CRLF). `None` for
/// anything that is not a well-formed untagged, continuation or tagged line.
pub fn parse_server_line(line: &[u8]) -> Option<ServerLine<'_>> {
    parse_trimmed_server_line(trim_eol(line))
}

/// Like [`parse_server_line`] for a line whose CRLF is already gone, so that
/// the slices it returns are suffixes of exactly that line.
fn parse_trimmed_server_line(line: &[u8]) -> Option<ServerLine<'_>> {
    match line {
        [b'*', b' ', rest @ ..] => Some(ServerLine::Untagged(rest)),
        [b'+', rest @ ..] => Some(ServerLine::Continuation(
            rest.strip_prefix(b" ").unwrap_or(rest),
        )),
        _ => parse_tagged(line),
    }
}

fn parse_tagged(line: &[u8]) -> Option<ServerLine<'_>> {
    let (tag, rest) = split_word(line);
    if tag.is_empty() || !tag.iter().all(|&b| is_astring_char(b)) {
        return None;
    }
    let (word, text) = split_word(rest?);
    let status = Status::from_word(word)?;
    Some(ServerLine::Tagged {
        tag,
        status,
        text: text.unwrap_or_default(),
    })
}

/// Splits at the first space: the word before it, and what follows the space
/// if there is one.
fn split_word(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    match bytes.iter().position(|&b| b == b' ') {
        Some(sp) => (&bytes[..sp], bytes.get(sp + 1..)),
        None => (bytes, None),
    }
}

/// Capability names from `* CAPABILITY a b c`, or from a `[CAPABILITY a b c]`
/// response code at the start of the text of a status line (untagged OK,
/// PREAUTH, BYE or any tagged line), which is where RFC 3501 puts it.
pub fn capabilities_in(line: &[u8]) -> Option<Vec<String>> {
    let line = trim_eol(line);
    if let Some(ServerLine::Untagged(rest)) = parse_trimmed_server_line(line)
        && let Some(names) = strip_prefix_ignore_case(rest, b"CAPABILITY")
        && matches!(names.first(), None | Some(b' '))
    {
        return Some(capability_names(names));
    }
    let (start, end) = capability_code(line)?;
    Some(capability_names(&line[start..end]))
}

/// Rewrites the upstream greeting: a `[CAPABILITY ...]` code gets the given
/// (already rewritten) list; an `* OK` greeting without any response code
/// (Office 365's) gets one, because some clients read capabilities only from
/// the greeting; anything else is kept. Always ends in CRLF.
pub fn rewrite_greeting(line: &[u8], capabilities: &[String]) -> Vec<u8> {
    let line = trim_eol(line);
    let mut out = match capability_code(line) {
        Some((start, end)) => {
            let mut out = line[..start].to_vec();
            for name in capabilities.iter().filter(|n| is_capability_name(n)) {
                out.push(b' ');
                out.extend_from_slice(name.as_bytes());
            }
            out.extend_from_slice(&line[end..]);
            out
        }
        None => with_capability_code(line, capabilities).unwrap_or_else(|| line.to_vec()),
    };
    out.extend_from_slice(b"\r\n");
    out
}

/// `* OK text` becomes `* OK [CAPABILITY ...] text`; `None` when the line is
/// not an untagged OK or already carries a response code.
fn with_capability_code(line: &[u8], capabilities: &[String]) -> Option<Vec<u8>> {
    let Some(ServerLine::Untagged(rest)) = parse_trimmed_server_line(line) else {
        return None;
    };
    let (word, text) = split_word(rest);
    if !word.eq_ignore_ascii_case(b"OK") || text.is_some_and(|t| t.starts_with(b"[")) {
        return None;
    }
    let mut out = b"* OK [CAPABILITY".to_vec();
    for name in capabilities.iter().filter(|n| is_capability_name(n)) {
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
    }
    out.push(b']');
    if let Some(text) = text {
        out.push(b' ');
        out.extend_from_slice(text);
    }
    Some(out)
}

/// Gives a tagged server line another tag, keeping the rest byte-exact.
/// Untagged and continuation lines come back unchanged.
pub fn retag(line: &[u8], tag: &str) -> Vec<u8> {
    match parse_server_line(line) {
        Some(ServerLine::Tagged { tag: old, .. }) => {
            let mut out = tag.as_bytes().to_vec();
            out.extend_from_slice(&line[old.len()..]);
            out
        }
        _ => line.to_vec(),
    }
}

/// The span of the names inside a `[CAPABILITY ...]` code of a line without
/// its CRLF: from just after the word CAPABILITY to just before the `]`.
fn capability_code(line: &[u8]) -> Option<(usize, usize)> {
    let text = match parse_trimmed_server_line(line)? {
        ServerLine::Untagged(rest) => {
            let (word, text) = split_word(rest);
            Status::from_word(word)?;
            text?
        }
        ServerLine::Tagged { text, .. } => text,
        ServerLine::Continuation(_) => return None,
    };
    let code = text.strip_prefix(b"[")?;
    let names = strip_prefix_ignore_case(code, b"CAPABILITY")?;
    if !matches!(names.first(), Some(b' ' | b']')) {
        return None;
    }
    let close = names.iter().position(|&b| b == b']')?;
    let start = line.len() - names.len();
    Some((start, start + close))
}

fn capability_names(names: &[u8]) -> Vec<String> {
    names
        .split(|&b| b == b' ')
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

pub(super) fn usable_capabilities(capabilities: Vec<String>, offer_starttls: bool) -> Vec<String> {
    capabilities
        .into_iter()
        .filter(|c| {
            is_capability_name(c) && (offer_starttls || !c.eq_ignore_ascii_case("STARTTLS"))
        })
        .collect()
}

/// A capability is an atom; anything else could break the line it goes into.
fn is_capability_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(is_atom_char)
}
