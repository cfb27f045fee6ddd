//! The escapes: one for text put into HTML (the local page, the loopback
//! sign-in answer) and XML (launchd's plist), one for text a client chose
//! that goes into a log field ([`log_text`]).

use std::fmt;

/// `&`, `<`, `>`, `"` and `'` as entities: safe in text and in quoted
/// attributes alike, in HTML and in XML (`&#39;` rather than `&apos;`, which
/// HTML 4 lacks), so a caller need not know which context it writes into.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A client's text (a user name, a sender, a server's reply) as a log field:
/// control characters (CR, LF, NUL, ESC, DEL, C1), Unicode line and
/// paragraph separators and bidirectional overrides are written as `\n`,
/// `\u{1b}` and the like, and `\` as `\\`, so one field can never start a
/// new log line, recolour a terminal or hide what it says, and the escaped
/// text reads back unambiguously.
pub(crate) fn log_text(text: &str) -> LogText<'_> {
    LogText(text)
}

/// What [`log_text`] returns: escapes while it is written, copies nothing.
pub(crate) struct LogText<'a>(&'a str);

impl fmt::Display for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        let mut rest = self.0;
        while let Some(at) = rest.find(needs_escape) {
            let (plain, from) = rest.split_at(at);
            f.write_str(plain)?;
            let mut chars = from.chars();
            let c = chars.next().unwrap_or_default();
            match c {
                '\\' => f.write_str("\\\\")?,
                c => {
                    for e in c.escape_default() {
                        f.write_char(e)?;
                    }
                }
            }
            rest = chars.as_str();
        }
        f.write_str(rest)
    }
}

impl fmt::Debug for LogText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        || c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::{escape, log_text};

    #[test]
    fn log_text_cannot_start_a_line_or_hide_itself() {
        let table: &[(&str, &str)] = &[
            ("alice@contoso.com", "alice@contoso.com"),
            ("a\nINFO forged", "a\\nINFO forged"),
            ("a\r\n\0b", "a\\r\\n\\u{0}b"),
            ("\u{1b}[31mred", "\\u{1b}[31mred"),
            ("x\u{7f}\u{85}y", "x\\u{7f}\\u{85}y"),
            ("left\u{202e}txt.exe", "left\\u{202e}txt.exe"),
            ("line\u{2028}sep", "line\\u{2028}sep"),
            ("DOMAIN\\user", "DOMAIN\\\\user"),
            ("\\n", "\\\\n"),
            ("café ✓", "café ✓"),
            ("", ""),
        ];
        for (raw, logged) in table {
            assert_eq!(log_text(raw).to_string(), *logged, "{raw:?}");
            assert!(!log_text(raw).to_string().contains(['\n', '\r']));
        }
    }

    #[test]
    fn escape_covers_html_and_xml_specials() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("plain é ✓"), "plain é ✓");
        assert_eq!(escape("&amp;"), "&amp;amp;");
    }
}
