//! A message too big for one Microsoft Graph request, split into what a
//! draft can be made of (the MIME with its largest attachments cut out,
//! byte for byte otherwise) and the attachments cut out, decoded to their
//! bytes, which Graph attaches to the draft one by one.
//!
//! Pure: bytes in, bytes out; `mailparse` reads the structure, and the
//! parts are cut out of the original bytes (its parts are sub-slices of
//! the message), so nothing else is re-encoded.

use mailparse::{DispositionType, MailHeaderMap as _, ParsedMail, parse_mail};

/// At most this many lines may start with `--` (boundary delimiters, and
/// signature separators) before the structure is not read at all: a part
/// nests only below such a line, so this bounds `mailparse`'s recursion
/// depth (one stack frame per level) against a message built of nested
/// multiparts. Real messages have one per part, a handful to a few dozen.
pub const MAX_DELIMITER_LINES: usize = 512;

/// Longest attachment name passed to Graph (a file name; longer ones are
/// cut, on a character boundary).
pub const MAX_NAME_CHARS: usize = 255;

/// An attachment cut out of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detached {
    /// The file name (`Content-Disposition` filename, else `Content-Type`
    /// name, else `attachment`), without control characters.
    pub name: String,
    /// The part's media type (`application/pdf`), lower case.
    pub content_type: String,
    /// The part's `Content-ID`, without its angle brackets.
    pub content_id: Option<String>,
    /// Shown in the body (it has a `Content-ID` and is not marked
    /// `attachment`): an image a HTML part refers to with `cid:`.
    pub inline: bool,
    /// The content, its transfer encoding undone.
    pub bytes: Vec<u8>,
}

/// What a draft is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// The message without the detached parts (and their delimiter lines).
    pub remaining: Vec<u8>,
    /// In the order they had in the message.
    pub detached: Vec<Detached>,
}

/// Why a message cannot be split to fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Even without every attachment that can be cut out, the rest is
    /// larger than `budget` (a big text body, a message that is one
    /// single part, or a structure that cannot be read).
    #[error("the message without its attachments is still {remaining} octets")]
    TooBig { remaining: usize },
}

/// Cuts the largest attachments out of `message` until what remains is at
/// most `budget` octets. A message already within `budget` comes back whole.
pub fn split_to_fit(message: &[u8], budget: usize) -> Result<Split, SplitError> {
    if message.len() <= budget {
        return Ok(Split {
            remaining: message.to_vec(),
            detached: Vec::new(),
        });
    }
    let too_big = SplitError::TooBig {
        remaining: message.len(),
    };
    if delimiter_lines(message) > MAX_DELIMITER_LINES {
        return Err(too_big);
    }
    let Ok(parsed) = parse_mail(message) else {
        return Err(too_big);
    };
    let mut candidates = Vec::new();
    // The top-level part is the message itself: never cut out.
    for sub in &parsed.subparts {
        collect(message, sub, &mut candidates);
    }
    // Largest first, until the rest fits.
    candidates.sort_by_key(|c| std::cmp::Reverse(c.cut.1 - c.cut.0));
    let mut remaining = message.len();
    let mut chosen = Vec::new();
    for candidate in candidates {
        if remaining <= budget {
            break;
        }
        remaining -= candidate.cut.1 - candidate.cut.0;
        chosen.push(candidate);
    }
    if remaining > budget {
        return Err(SplitError::TooBig { remaining });
    }
    chosen.sort_by_key(|c| c.cut.0);
    let mut out = Vec::with_capacity(remaining);
    let mut at = 0;
    for c in &chosen {
        out.extend_from_slice(message.get(at..c.cut.0).unwrap_or_default());
        at = c.cut.1;
    }
    out.extend_from_slice(message.get(at..).unwrap_or_default());
    Ok(Split {
        remaining: out,
        detached: chosen.into_iter().map(|c| c.part).collect(),
    })
}

/// A part that may be cut out: the octets to cut, and what it carries.
struct Candidate {
    cut: (usize, usize),
    part: Detached,
}

fn collect(message: &[u8], part: &ParsedMail, out: &mut Vec<Candidate>) {
    if !part.subparts.is_empty() {
        for sub in &part.subparts {
            collect(message, sub, out);
        }
        return;
    }
    if let Some(candidate) = candidate(message, part) {
        out.push(candidate);
    }
}

/// A leaf part that is an attachment (a file name, `attachment`, or a
/// media type other than text), whose content decodes, with the octets
/// it takes in `message` (its delimiter line before it, its line end after).
fn candidate(message: &[u8], part: &ParsedMail) -> Option<Candidate> {
    let mimetype = part.ctype.mimetype.to_ascii_lowercase();
    if mimetype.starts_with("multipart/") {
        // A multipart without a usable boundary: structure, not a file.
        return None;
    }
    let disposition = part.get_content_disposition();
    let file_name = disposition
        .params
        .get("filename")
        .or_else(|| part.ctype.params.get("name"))
        .map(|n| clean_name(n))
        .filter(|n| !n.is_empty());
    let is_attachment = disposition.disposition == DispositionType::Attachment
        || file_name.is_some()
        || !mimetype.starts_with("text/");
    if !is_attachment {
        return None;
    }
    // A part that does not decode (bad base64) stays in the MIME.
    let bytes = part.get_body_raw().ok()?;
    let (start, end) = offsets(message, part.raw_bytes)?;
    let cut_start = delimiter_line_start(message, start)?;
    let cut_end = after_line_end(message, end);
    let content_id = part
        .headers
        .get_first_value("Content-ID")
        .map(|v| clean_name(v.trim().trim_start_matches('<').trim_end_matches('>')))
        .filter(|v| !v.is_empty());
    let inline = content_id.is_some() && disposition.disposition != DispositionType::Attachment;
    Some(Candidate {
        cut: (cut_start, cut_end),
        part: Detached {
            name: file_name.unwrap_or_else(|| "attachment".to_owned()),
            content_type: mimetype,
            content_id,
            inline,
            bytes,
        },
    })
}

/// Where `part` (a sub-slice of `message`, as `mailparse` gives them) lies.
fn offsets(message: &[u8], part: &[u8]) -> Option<(usize, usize)> {
    let base = message.as_ptr() as usize;
    let start = (part.as_ptr() as usize).checked_sub(base)?;
    let end = start.checked_add(part.len())?;
    (end <= message.len()).then_some((start, end))
}

/// The start of the line before `part_start` (the `--boundary` line the
/// part follows); `None` if that line is not a delimiter.
fn delimiter_line_start(message: &[u8], part_start: usize) -> Option<usize> {
    let before = message.get(..part_start.checked_sub(1)?)?;
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |lf| lf + 1);
    message
        .get(line_start..)?
        .starts_with(b"--")
        .then_some(line_start)
}

/// Past the line end (CRLF or LF) at `end`, if there is one: it belongs to
/// the next delimiter, which stays, so one of the two goes with the part.
fn after_line_end(message: &[u8], end: usize) -> usize {
    match message.get(end..) {
        Some([b'\r', b'\n', ..]) => end + 2,
        Some([b'\n', ..]) => end + 1,
        _ => end,
    }
}

fn delimiter_lines(message: &[u8]) -> usize {
    usize::from(message.starts_with(b"--")) + message.windows(3).filter(|w| w == b"\n--").count()
}

/// A name without control characters, at most [`MAX_NAME_CHARS`].
fn clean_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect::<String>()
        .trim()
        .to_owned()
}

#[cfg(test)]
#[path = "large_tests.rs"]
mod tests;
