use base64::Engine as _;

use super::*;

const HEAD: &str = "From: a@x.test\r\nTo: b@x.test\r\nSubject: scan\r\nMIME-Version: 1.0\r\n";

fn b64_lines(bytes: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push_str("\r\n");
    }
    out
}

fn text_part() -> String {
    "--B\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee the scan.\r\n".to_owned()
}

fn pdf_part(name: &str, bytes: &[u8]) -> String {
    format!(
        "--B\r\nContent-Type: application/pdf; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}",
        b64_lines(bytes)
    )
}

fn mixed(parts: &[String]) -> Vec<u8> {
    let mut m = format!("{HEAD}Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\npreamble\r\n");
    for p in parts {
        m.push_str(p);
    }
    m.push_str("--B--\r\n");
    m.into_bytes()
}

#[test]
fn a_message_within_the_budget_comes_back_whole() {
    let m = mixed(&[text_part(), pdf_part("a.pdf", b"%PDF-1.7")]);
    let split = split_to_fit(&m, m.len()).unwrap();
    assert_eq!(split.remaining, m);
    assert!(split.detached.is_empty());
}

#[test]
fn the_largest_attachment_goes_first_and_the_rest_is_byte_exact() {
    let big: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let small: Vec<u8> = vec![0xAB; 3_000];
    let m = mixed(&[
        text_part(),
        pdf_part("small.pdf", &small),
        pdf_part("big.pdf", &big),
    ]);
    let split = split_to_fit(&m, 10_000).unwrap();
    assert_eq!(split.detached.len(), 1);
    let d = &split.detached[0];
    assert_eq!(d.name, "big.pdf");
    assert_eq!(d.content_type, "application/pdf");
    assert_eq!(d.bytes, big);
    assert!(!d.inline && d.content_id.is_none());
    assert_eq!(
        split.remaining,
        mixed(&[text_part(), pdf_part("small.pdf", &small)])
    );
}

#[test]
fn several_are_cut_out_until_it_fits_in_message_order() {
    let a = vec![1u8; 20_000];
    let b = vec![2u8; 30_000];
    let m = mixed(&[pdf_part("a.pdf", &a), text_part(), pdf_part("b.pdf", &b)]);
    let split = split_to_fit(&m, 2_000).unwrap();
    let names: Vec<&str> = split.detached.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, ["a.pdf", "b.pdf"]);
    assert_eq!(split.remaining, mixed(&[text_part()]));
}

#[test]
fn nested_multiparts_an_inline_image_and_a_part_without_a_file_name() {
    let png = vec![0x89u8; 9_000];
    let blob = vec![7u8; 12_000];
    let related = format!(
        "--B\r\nContent-Type: multipart/related; boundary=\"R\"\r\n\r\n\
         --R\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@x\">\r\n\
         --R\r\nContent-Type: image/png\r\nContent-ID: <logo@x>\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\
         --R--\r\n",
        b64_lines(&png)
    );
    let nameless = format!(
        "--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        b64_lines(&blob)
    );
    let m = mixed(&[text_part(), related, nameless]);
    let split = split_to_fit(&m, 1_000).unwrap();
    assert_eq!(split.detached.len(), 2);
    let image = &split.detached[0];
    assert_eq!(image.content_type, "image/png");
    assert_eq!(image.content_id.as_deref(), Some("logo@x"));
    assert!(image.inline);
    assert_eq!(image.bytes, png);
    assert_eq!(split.detached[1].name, "attachment");
    assert_eq!(split.detached[1].bytes, blob);
    let rest = String::from_utf8(split.remaining).unwrap();
    assert!(
        rest.contains(
            "--R\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@x\">\r\n--R--\r\n"
        ),
        "{rest}"
    );
    assert!(rest.ends_with("See the scan.\r\n--B\r\nContent-Type: multipart/related; boundary=\"R\"\r\n\r\n--R\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@x\">\r\n--R--\r\n--B--\r\n"), "{rest}");
}

#[test]
fn hostile_or_unsplittable_messages_are_refused_without_a_panic() {
    let long_text = format!(
        "{HEAD}Content-Type: text/plain\r\n\r\n{}\r\n",
        "x".repeat(5_000)
    );
    let no_boundary = format!(
        "{HEAD}Content-Type: multipart/mixed\r\n\r\n--B\r\nContent-Type: application/pdf\r\n\r\n{}\r\n--B--\r\n",
        "y".repeat(5_000)
    );
    let bad_base64 = format!(
        "{HEAD}Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: application/pdf\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}\r\n--B--\r\n",
        "!!!!".repeat(2_000)
    );
    let single_pdf = format!(
        "{HEAD}Content-Type: application/pdf; name=a.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        b64_lines(&[3u8; 6_000])
    );
    let mut deep = format!("{HEAD}Content-Type: multipart/mixed; boundary=B\r\n\r\n");
    for _ in 0..5_000 {
        deep.push_str("--B\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n");
    }
    let unterminated = format!(
        "{HEAD}Content-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n{}",
        "z".repeat(5_000)
    );
    let table: [(&str, &[u8]); 7] = [
        ("a long text body", long_text.as_bytes()),
        ("a multipart without a boundary", no_boundary.as_bytes()),
        ("bad base64 stays in", bad_base64.as_bytes()),
        ("a message that is one pdf", single_pdf.as_bytes()),
        ("nested multiparts past the cap", deep.as_bytes()),
        ("no closing delimiter, text only", unterminated.as_bytes()),
        ("not MIME at all", &[0xFFu8; 4_000]),
    ];
    for (what, message) in table {
        match split_to_fit(message, 1_000) {
            Err(SplitError::TooBig { remaining }) => assert!(remaining > 1_000, "{what}"),
            Ok(split) => panic!("{what}: split into {} parts", split.detached.len()),
        }
    }
}

#[test]
fn an_attachment_without_a_closing_delimiter_is_still_cut_out() {
    let pdf = vec![5u8; 9_000];
    let mut m = mixed(&[text_part(), pdf_part("a.pdf", &pdf)]);
    m.truncate(m.len() - b"--B--\r\n".len());
    let split = split_to_fit(&m, 1_000).unwrap();
    assert_eq!(split.detached[0].bytes, pdf);
    let mut want = mixed(&[text_part()]);
    want.truncate(want.len() - b"--B--\r\n".len());
    assert_eq!(split.remaining, want);
}

#[test]
fn names_lose_control_characters_and_are_bounded() {
    let hostile = format!("a\u{7}b{}", "n".repeat(400));
    let m = mixed(&[text_part(), pdf_part(&hostile, &[1u8; 5_000])]);
    let split = split_to_fit(&m, 1_000).unwrap();
    let name = &split.detached[0].name;
    assert!(name.starts_with("abn"));
    assert_eq!(name.chars().count(), MAX_NAME_CHARS);
    assert!(!name.chars().any(char::is_control));
}
