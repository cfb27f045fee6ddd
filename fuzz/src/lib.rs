//! Helpers shared by the fuzz targets.
//!
//! A front-end input is one option byte followed by the bytes a client sends.
//! Bit 0 of the option byte says whether the front end offers STARTTLS; the
//! other seven bits seed how the bytes are cut into reads (0: one read), so
//! the fuzzer explores splits without a second input format. The seed corpora
//! (`seeds.sh`) are the unit-test vectors behind a zero option byte.

/// The option byte and the client bytes of a front-end input.
pub struct Session<'a> {
    pub offer_tls: bool,
    pub chunks: Vec<&'a [u8]>,
}

pub fn session(data: &[u8]) -> Session<'_> {
    let Some((&options, bytes)) = data.split_first() else {
        return Session {
            offer_tls: false,
            chunks: Vec::new(),
        };
    };
    let mut seed = u32::from(options >> 1);
    let mut chunks = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let len = if seed == 0 {
            rest.len()
        } else {
            // xorshift32: small reads dominate, some are large.
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            let len = match seed % 4 {
                0 => 1,
                1 => 1 + (seed >> 8) as usize % 8,
                2 => 1 + (seed >> 8) as usize % 64,
                _ => 1 + (seed >> 8) as usize % 4096,
            };
            len.min(rest.len())
        };
        let (chunk, tail) = rest.split_at(len);
        chunks.push(chunk);
        rest = tail;
    }
    Session {
        offer_tls: options & 1 == 1,
        chunks,
    }
}

/// Splits fuzz bytes into text lines, as the driver hands parsed upstream
/// lines to the rewriting helpers.
pub fn lines(data: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(data)
        .split('\n')
        .map(str::to_owned)
        .collect()
}

/// A reply line the proxy writes must end in exactly one CRLF and contain no
/// other CR or LF: a line built from outside input must never split in two.
pub fn assert_one_line(line: &[u8]) {
    let body = line
        .strip_suffix(b"\r\n")
        .unwrap_or_else(|| panic!("no CRLF at the end of {line:?}"));
    assert!(
        !body.iter().any(|&b| b == b'\r' || b == b'\n'),
        "CR or LF inside {line:?}"
    );
}

/// Every line of a multi-line reply is a well-formed line.
pub fn assert_lines(reply: &[u8]) {
    assert!(reply.ends_with(b"\r\n"), "no CRLF at the end of {reply:?}");
    for line in reply.split_inclusive(|&b| b == b'\n') {
        assert_one_line(line);
    }
}
