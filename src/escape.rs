//! The one escape for text put into HTML (the local page, the loopback
//! sign-in answer) and XML (launchd's plist).

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

#[cfg(test)]
mod tests {
    use super::escape;

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
