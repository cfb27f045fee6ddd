//! The fixed-account relay filter: hostile client streams and the exact
//! bytes each side gets, fed whole and byte by byte.

use super::*;

const SERVER_OK: &[u8] = b"250 2.0.0 OK\r\n";

fn policy() -> Policy {
    Policy {
        allowed_senders: vec!["scanner@example.test".into()],
        max_recipients: 3,
    }
}

/// A filter past its first `MAIL FROM` (as the relay starts), with the
/// server's 250 for it already through.
fn in_transaction() -> Filter {
    let mut f = Filter::new(policy());
    let mut out = Output::default();
    f.from_client(b"MAIL FROM:<scanner@example.test>\r\n", &mut out);
    f.from_server(SERVER_OK, &mut out).unwrap();
    f
}

/// Feeds `client` whole, then answers every command that went up with
/// `reply_for` (by its verb) until nothing more goes up. Returns what went
/// to the server and what the client got.
fn exchange(
    f: &mut Filter,
    client: &[u8],
    reply_for: impl Fn(&[u8]) -> &'static [u8],
) -> (Vec<u8>, Vec<u8>) {
    let mut out = Output::default();
    f.from_client(client, &mut out);
    let mut up = Vec::new();
    let mut answered = 0;
    loop {
        up.extend_from_slice(&out.to_server);
        out.to_server.clear();
        let commands = commands_in(&up);
        if answered == commands.len() {
            break;
        }
        for command in &commands[answered..] {
            f.from_server(reply_for(command), &mut out).unwrap();
        }
        answered = commands.len();
    }
    (up, out.to_client)
}

/// The lines that went up, a message's text counted as one "command".
fn commands_in(up: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut in_data = false;
    let mut text_start = 0;
    let mut pos = 0;
    while let Some(lf) = up[pos..].iter().position(|&b| b == b'\n') {
        let line = &up[pos..pos + lf + 1];
        if in_data {
            if line == b".\r\n" {
                out.push(up[text_start..pos + lf + 1].to_vec());
                in_data = false;
            }
        } else {
            out.push(line.to_vec());
            if line.eq_ignore_ascii_case(b"DATA\r\n") {
                in_data = true;
                text_start = pos + lf + 1;
            }
        }
        pos += lf + 1;
    }
    out
}

fn office365(command: &[u8]) -> &'static [u8] {
    let upper = command.to_ascii_uppercase();
    if upper.starts_with(b"DATA") {
        b"354 Start mail input; end with <CRLF>.<CRLF>\r\n"
    } else if upper.starts_with(b"EHLO") {
        b"250-smtp.office365.com Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-AUTH LOGIN XOAUTH2\r\n250-BINARYMIME\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n"
    } else if upper.starts_with(b"QUIT") {
        b"221 2.0.0 Bye\r\n"
    } else if upper.starts_with(b"RCPT") {
        b"250 2.1.5 Recipient OK\r\n"
    } else if upper.starts_with(b"MAIL") {
        b"250 2.1.0 Sender OK\r\n"
    } else if upper.ends_with(b"\r\n.\r\n") || upper == b".\r\n" {
        b"250 2.6.0 Queued mail for delivery\r\n"
    } else {
        SERVER_OK
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A name, the client's bytes after the first MAIL FROM, what goes up,
/// what the client gets.
type Case = (&'static str, &'static [u8], &'static [u8], &'static [u8]);

#[test]
fn hostile_streams_table() {
    let cases: &[Case] = &[
        (
            "a sender outside allowed_senders after RSET is refused here",
            b"RSET\r\nMAIL FROM:<ceo@example.test>\r\nRCPT TO:<x@example.test>\r\nDATA\r\n",
            b"RSET\r\n",
            b"250 2.0.0 OK\r\n550 5.7.1 Sender <ceo@example.test> is not allowed on this relay\r\n503 5.5.1 Need MAIL command\r\n503 5.5.1 Need MAIL command\r\n",
        ),
        (
            "a second MAIL in a transaction",
            b"MAIL FROM:<scanner@example.test>\r\n",
            b"",
            b"503 5.5.1 Sender already specified\r\n",
        ),
        (
            "recipients beyond the cap",
            b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nRCPT TO:<d@x.test>\r\n",
            b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\n",
            b"250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n452 4.5.3 Too many recipients (at most 3 per message)\r\n",
        ),
        (
            "LF.LF inside DATA cannot end the message; the MAIL after it is text",
            b"RCPT TO:<a@x.test>\r\nDATA\r\nhello\n.\nMAIL FROM:<ceo@example.test>\nRCPT TO:<v@x.test>\nDATA\nforged\n.\r\n",
            b"RCPT TO:<a@x.test>\r\nDATA\r\nhello\r\n..\r\nMAIL FROM:<ceo@example.test>\r\nRCPT TO:<v@x.test>\r\nDATA\r\nforged\r\n.\r\n",
            b"250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n250 2.6.0 Queued mail for delivery\r\n",
        ),
        (
            "CR.CR inside DATA: bare CRs become line ends, the dot is stuffed",
            b"RCPT TO:<a@x.test>\r\nDATA\r\nhello\r.\rMAIL FROM:<ceo@example.test>\r\n.\r\n",
            b"RCPT TO:<a@x.test>\r\nDATA\r\nhello\r\n..\r\nMAIL FROM:<ceo@example.test>\r\n.\r\n",
            b"250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n250 2.6.0 Queued mail for delivery\r\n",
        ),
        (
            "bare LF and bare CR in text, dot-stuffing kept, CR CR LF",
            b"RCPT TO:<a@x.test>\r\nDATA\r\na\nb\rc\r\r\n..x\r\n.y\n\r\n.\r\n",
            b"RCPT TO:<a@x.test>\r\nDATA\r\na\r\nb\r\nc\r\n\r\n..x\r\n.y\r\n\r\n.\r\n",
            b"250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n250 2.6.0 Queued mail for delivery\r\n",
        ),
        (
            "a lone dot ended by CR then LF later, and a dot then bare CR",
            b"RCPT TO:<a@x.test>\r\nDATA\r\n.\rx\r\n.\r\n",
            b"RCPT TO:<a@x.test>\r\nDATA\r\n..\r\nx\r\n.\r\n",
            b"250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n250 2.6.0 Queued mail for delivery\r\n",
        ),
        (
            "an empty message",
            b"RCPT TO:<a@x.test>\r\nDATA\r\n.\r\n",
            b"RCPT TO:<a@x.test>\r\nDATA\r\n.\r\n",
            b"250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n250 2.6.0 Queued mail for delivery\r\n",
        ),
        (
            "after the message every MAIL is checked again",
            b"RCPT TO:<a@x.test>\r\nDATA\r\nm\r\n.\r\nMAIL FROM:<ceo@example.test>\r\nMAIL FROM:<SCANNER@example.test>\r\n",
            b"RCPT TO:<a@x.test>\r\nDATA\r\nm\r\n.\r\nMAIL FROM:<SCANNER@example.test>\r\n",
            b"250 2.1.5 Recipient OK\r\n354 Start mail input; end with <CRLF>.<CRLF>\r\n250 2.6.0 Queued mail for delivery\r\n550 5.7.1 Sender <ceo@example.test> is not allowed on this relay\r\n250 2.1.0 Sender OK\r\n",
        ),
        (
            "commands with bare LF go up with CRLF; controls and unknown verbs stay here",
            b"NOOP\nRCPT TO:<a@x.test>\rRCPT TO:<ceo@x.test>\r\nXEXCH50 1 2\r\nRCPT TO:<a\0@x.test>\r\n",
            b"NOOP\r\n",
            b"250 2.0.0 OK\r\n500 5.5.2 Control characters are not allowed in commands\r\n500 5.5.2 Command not recognized\r\n500 5.5.2 Control characters are not allowed in commands\r\n",
        ),
        (
            "AUTH and STARTTLS are answered here",
            b"AUTH PLAIN AGZvbwBiYXI=\r\nSTARTTLS\r\n",
            b"",
            b"503 5.5.1 Already authenticated\r\n503 5.5.1 STARTTLS must come before the first MAIL FROM\r\n",
        ),
        (
            "BDAT is refused and its chunk skipped unread",
            b"RCPT TO:<a@x.test>\r\nBDAT 24 LAST\r\nMAIL FROM:<ceo@x.test>\r\nNOOP\r\n",
            b"RCPT TO:<a@x.test>\r\nNOOP\r\n",
            b"250 2.1.5 Recipient OK\r\n502 5.5.1 BDAT is not offered on this relay, use DATA\r\n250 2.0.0 OK\r\n",
        ),
        (
            "a later EHLO loses CHUNKING and BINARYMIME and resets the transaction",
            b"EHLO scanner\r\nRCPT TO:<a@x.test>\r\n",
            b"EHLO scanner\r\n",
            b"250-smtp.office365.com Hello\r\n250-SIZE 157286400\r\n250-PIPELINING\r\n250-AUTH PLAIN LOGIN\r\n250 SMTPUTF8\r\n503 5.5.1 Need MAIL command\r\n",
        ),
        (
            "QUIT goes up and nothing after it",
            b"QUIT\r\nMAIL FROM:<ceo@x.test>\r\n",
            b"QUIT\r\n",
            b"221 2.0.0 Bye\r\n",
        ),
        (
            "an unfinished line never goes up",
            b"RCPT TO:<a@x.test>",
            b"",
            b"",
        ),
    ];
    for (name, client, up, down) in cases {
        let (got_up, got_down) = exchange(&mut in_transaction(), client, office365);
        assert_eq!(text(&got_up), text(up), "to the server: {name}");
        assert_eq!(text(&got_down), text(down), "to the client: {name}");
        // Byte by byte gives the same result.
        let mut f = in_transaction();
        let mut up_bytes = Vec::new();
        let mut down_bytes = Vec::new();
        let mut answered = 0;
        for b in client.iter() {
            let (u, d) = exchange_step(
                &mut f,
                std::slice::from_ref(b),
                &mut answered,
                &mut up_bytes,
            );
            up_bytes = u;
            down_bytes.extend(d);
        }
        assert_eq!(
            text(&up_bytes),
            text(up),
            "byte by byte, to the server: {name}"
        );
        assert_eq!(
            text(&down_bytes),
            text(down),
            "byte by byte, to the client: {name}"
        );
    }
}

/// Feeds one piece and answers whatever new commands went up.
fn exchange_step(
    f: &mut Filter,
    piece: &[u8],
    answered: &mut usize,
    up: &mut Vec<u8>,
) -> (Vec<u8>, Vec<u8>) {
    let mut out = Output::default();
    f.from_client(piece, &mut out);
    let mut up = std::mem::take(up);
    loop {
        up.extend_from_slice(&out.to_server);
        out.to_server.clear();
        let commands = commands_in(&up);
        if *answered == commands.len() {
            break;
        }
        for command in &commands[*answered..] {
            f.from_server(office365(command), &mut out).unwrap();
        }
        *answered = commands.len();
    }
    (up, out.to_client)
}

#[test]
fn pipelined_replies_keep_their_order() {
    // The refusal of the second MAIL waits for the server's answers to the
    // commands before it, however the server's bytes are split.
    let mut f = in_transaction();
    let mut out = Output::default();
    f.from_client(
        b"RCPT TO:<a@x.test>\r\nRSET\r\nMAIL FROM:<ceo@x.test>\r\nNOOP\r\n",
        &mut out,
    );
    assert_eq!(
        text(&out.to_server),
        "RCPT TO:<a@x.test>\r\nRSET\r\nNOOP\r\n"
    );
    assert!(
        out.to_client.is_empty(),
        "nothing before the server's replies"
    );
    for b in b"250 2.1.5 OK\r\n250-2.0.0 multi\r\n250 2.0.0 line\r\n".iter() {
        f.from_server(std::slice::from_ref(b), &mut out).unwrap();
    }
    assert_eq!(
        text(&out.to_client),
        "250 2.1.5 OK\r\n250-2.0.0 multi\r\n250 2.0.0 line\r\n550 5.7.1 Sender <ceo@x.test> is not allowed on this relay\r\n"
    );
    f.from_server(SERVER_OK, &mut out).unwrap();
    assert!(text(&out.to_client).ends_with("relay\r\n250 2.0.0 OK\r\n"));
    assert_eq!(out.events, vec![Event::SenderRefused("ceo@x.test".into())]);
}

#[test]
fn nothing_after_data_is_read_until_the_server_answers_it() {
    let mut f = in_transaction();
    let mut out = Output::default();
    // A client that does not wait for 354: its next line must not be read
    // as a command before the server says whether text follows.
    f.from_client(
        b"RCPT TO:<a@x.test>\r\nDATA\r\nMAIL FROM:<ceo@x.test>\r\n",
        &mut out,
    );
    assert_eq!(text(&out.to_server), "RCPT TO:<a@x.test>\r\nDATA\r\n");
    f.from_server(b"250 2.1.5 OK\r\n", &mut out).unwrap();
    out.to_server.clear();
    // The server refuses DATA: the held line is a command after all, and refused.
    f.from_server(b"554 5.5.1 No valid recipients\r\n", &mut out)
        .unwrap();
    assert!(out.to_server.is_empty());
    assert!(
        text(&out.to_client)
            .ends_with("554 5.5.1 No valid recipients\r\n503 5.5.1 Sender already specified\r\n")
    );

    // Accepted: the held line is message text.
    let mut f = in_transaction();
    let mut out = Output::default();
    f.from_client(
        b"RCPT TO:<a@x.test>\r\nDATA\r\nMAIL FROM:<ceo@x.test>\r\n.\r\n",
        &mut out,
    );
    f.from_server(b"250 2.1.5 OK\r\n354 go\r\n", &mut out)
        .unwrap();
    assert_eq!(
        text(&out.to_server),
        "RCPT TO:<a@x.test>\r\nDATA\r\nMAIL FROM:<ceo@x.test>\r\n.\r\n"
    );
}

#[test]
fn caps_hold() {
    // A command line past the cap closes the session, nothing goes up.
    let mut f = in_transaction();
    let mut out = Output::default();
    let mut long = b"RCPT TO:<".to_vec();
    long.extend(std::iter::repeat_n(b'a', MAX_COMMAND_LINE));
    f.from_client(&long, &mut out);
    assert!(out.to_server.is_empty());
    assert!(f.closes());
    assert!(text(&out.to_client).starts_with("500 5.5.2 Line too long"));
    assert!(!f.wants_client());

    // Held bytes: the relay stops reading past MAX_HELD while DATA waits.
    let mut f = in_transaction();
    let mut out = Output::default();
    f.from_client(b"RCPT TO:<a@x.test>\r\nDATA\r\n", &mut out);
    f.from_client(&vec![b'x'; MAX_HELD], &mut out);
    assert!(!f.wants_client());

    // A BDAT size that cannot be read closes.
    let mut f = in_transaction();
    let mut out = Output::default();
    f.from_client(b"BDAT lots\r\n", &mut out);
    assert!(f.closes());

    // The server's side: lines that are not replies, or too long.
    let mut f = in_transaction();
    let mut out = Output::default();
    assert_eq!(
        f.from_server(b"hello\r\n", &mut out),
        Err(FilterError::MalformedReply)
    );
    let mut f = in_transaction();
    assert_eq!(
        f.from_server(&vec![b'2'; MAX_REPLY + 1], &mut out),
        Err(FilterError::ReplyTooLong)
    );
}

#[test]
fn a_long_message_streams_unchanged() {
    let mut f = in_transaction();
    let mut out = Output::default();
    f.from_client(b"RCPT TO:<a@x.test>\r\nDATA\r\n", &mut out);
    f.from_server(b"250 OK\r\n354 go\r\n", &mut out).unwrap();
    out.to_server.clear();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit\r\n..dot\r\n";
    let mut sent = Vec::new();
    for _ in 0..10_000 {
        f.from_client(line, &mut out);
        sent.extend_from_slice(line);
    }
    f.from_client(b".\r\nRSET\r\n", &mut out);
    sent.extend_from_slice(b".\r\nRSET\r\n");
    assert!(
        out.to_server == sent,
        "a canonical message must pass as sent"
    );
    assert!(f.held.is_empty());
}

#[test]
fn random_streams_agree_with_the_server_on_the_end_of_each_message() {
    // Whatever a client sends, what goes up is canonical: every line ends
    // in CRLF, and a message ends upstream exactly where the filter ended it.
    let alphabet: &[&[u8]] = &[
        b"\r",
        b"\n",
        b".",
        b"x",
        b"\r\n",
        b".\r\n",
        b"\n.\n",
        b"\r.\r",
        b"MAIL FROM:<ceo@x.test>",
        b"DATA",
        b"RCPT TO:<a@x.test>",
        b"RSET",
        b"\0",
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..300 {
        let mut client = b"RCPT TO:<a@x.test>\r\nDATA\r\n".to_vec();
        for _ in 0..(next() % 60) {
            client.extend_from_slice(alphabet[(next() % alphabet.len() as u64) as usize]);
        }
        let (up, _) = exchange(&mut in_transaction(), &client, office365);
        // No bare CR or LF anywhere upstream.
        for (i, &b) in up.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(up.get(i.wrapping_sub(1)), Some(&b'\r'), "{:?}", text(&up));
            }
            if b == b'\r' {
                assert_eq!(up.get(i + 1), Some(&b'\n'), "{:?}", text(&up));
            }
        }
        // Every MAIL the server reads as a command names an allowed sender.
        let is_text = |block: &[u8]| block == b".\r\n" || block.ends_with(b"\r\n.\r\n");
        for command in commands_in(&up).into_iter().filter(|c| !is_text(c)) {
            assert!(
                !command.to_ascii_uppercase().starts_with(b"MAIL FROM:<CEO"),
                "{:?}",
                text(&up)
            );
        }
    }
}
