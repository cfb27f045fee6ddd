use super::*;

const MAX: usize = 100;

fn machine(senders: Option<&[&str]>) -> Submission {
    Submission::new(
        Rules {
            max_message: MAX,
            max_recipients: 2,
            senders: senders.map(|s| Policy {
                allowed_senders: s.iter().map(|a| a.to_string()).collect(),
                max_recipients: 2,
            }),
        },
        b"250 ehlo\r\n".to_vec(),
        b"250 helo\r\n".to_vec(),
    )
}

/// Feeds `input` at once; the replies in order, each delivery as `DELIVER`.
fn run(m: &mut Submission, input: &[u8]) -> (Vec<String>, Vec<Envelope>) {
    let mut buf = input.to_vec();
    let mut replies = Vec::new();
    let mut delivered = Vec::new();
    loop {
        match m.step(&mut buf) {
            Step::NeedMore => return (replies, delivered),
            Step::Reply(r) => replies.push(String::from_utf8(r).unwrap()),
            Step::Close(r) => {
                replies.push(String::from_utf8(r).unwrap());
                return (replies, delivered);
            }
            Step::Deliver(e) => {
                replies.push("DELIVER".into());
                delivered.push(e);
            }
        }
    }
}

fn codes(replies: &[String]) -> Vec<&str> {
    replies
        .iter()
        .map(|r| r.get(..3).unwrap_or(r.as_str()))
        .collect()
}

#[test]
fn one_transaction_is_delivered_unstuffed_and_byte_exact() {
    let mut m = machine(None);
    let input = b"MAIL FROM:<s@x.test> BODY=8BITMIME SIZE=50\r\nRCPT TO:<a@y.test>\r\nDATA\r\n\
        Subject: caf\xc3\xa9\r\n\r\n..dot\r\nbare\nline\r\n.\r\nQUIT\r\n";
    let (replies, delivered) = run(&mut m, input);
    assert_eq!(codes(&replies), ["250", "250", "354", "DEL", "221"]);
    assert_eq!(delivered[0].sender, "s@x.test");
    assert_eq!(delivered[0].recipients, ["a@y.test"]);
    assert_eq!(
        delivered[0].message,
        b"Subject: caf\xc3\xa9\r\n\r\n.dot\r\nbare\nline\r\n"
    );
}

#[test]
fn a_lone_dot_ended_by_a_bare_lf_is_content() {
    let mut m = machine(None);
    let (_, delivered) = run(
        &mut m,
        b"MAIL FROM:<>\r\nRCPT TO:<a@y.test>\r\nDATA\r\nx\n.\nmore\r\n.\r\n",
    );
    assert_eq!(delivered[0].message, b"x\n.\nmore\r\n");
    assert_eq!(delivered[0].sender, "");
}

#[test]
fn input_in_single_bytes_gives_the_same_result() {
    let input = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\nA\r\n..B\r\n.\r\n";
    let mut m = machine(None);
    let mut buf = Vec::new();
    let mut delivered = Vec::new();
    for &b in input.iter() {
        buf.push(b);
        loop {
            match m.step(&mut buf) {
                Step::NeedMore => break,
                Step::Deliver(e) => delivered.push(e),
                Step::Reply(_) => {}
                Step::Close(_) => panic!("closed"),
            }
        }
    }
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].message, b"A\r\n.B\r\n");
}

#[test]
fn hostile_and_out_of_order_commands_get_their_replies() {
    let table: &[(&[u8], &[&str])] = &[
        (b"RCPT TO:<a@y.test>\r\n", &["503"]),
        (b"DATA\r\n", &["503"]),
        (b"MAIL FROM:<s@x.test>\r\nDATA\r\n", &["250", "554"]),
        (b"MAIL FROM:<s@x.test>\r\nMAIL FROM:<t@x.test>\r\n", &["250", "503"]),
        (b"MAIL FROM:s@x.test\r\n", &["501"]),
        (b"MAIL TO:<s@x.test>\r\n", &["501"]),
        (b"MAIL FROM:<s@x.test> SIZE=101\r\n", &["552"]),
        (b"MAIL FROM:<s@x.test> SIZE=99999999999999999999999\r\n", &["501"]),
        (b"MAIL FROM:<s@x.test> SIZE=abc\r\n", &["501"]),
        (b"MAIL FROM:<s@x.test> SMTPUTF8\r\n", &["555"]),
        (b"MAIL FROM:<s@x.test>\r\nRCPT TO:<>\r\n", &["250", "501"]),
        (b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test> NOTIFY=NEVER\r\n", &["250", "555"]),
        (
            b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n",
            &["250", "250", "250", "452"],
        ),
        (
            b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nRCPT TO:<A@y.test>\r\nRCPT TO:<c@y.test>\r\n",
            &["250", "250", "250", "250"],
        ),
        (b"MAIL FROM:<s@x.test>\r\nRSET\r\nRCPT TO:<a@y.test>\r\n", &["250", "250", "503"]),
        (b"AUTH PLAIN AGFAYg==\r\n", &["503"]),
        (b"STARTTLS\r\n", &["503"]),
        (b"BDAT 10 LAST\r\n", &["502"]),
        (b"EHLO\r\n", &["501"]),
        (b"EHLO c.test\r\nHELO c.test\r\nNOOP\r\nVRFY x\r\nHELP\r\n", &["250", "250", "250", "252", "214"]),
        (b"\x00\xff\r\n", &["500"]),
        (b"DATA extra\r\n", &["501"]),
    ];
    for (input, want) in table {
        let mut m = machine(None);
        let (replies, delivered) = run(&mut m, input);
        assert_eq!(
            &codes(&replies),
            want,
            "{:?}",
            String::from_utf8_lossy(input)
        );
        assert!(delivered.is_empty());
    }
}

#[test]
fn an_overlong_command_line_closes() {
    let mut m = machine(None);
    let mut input = vec![b'A'; MAX_COMMAND_LINE + 10];
    input.extend_from_slice(b"\r\n");
    let (replies, _) = run(&mut m, &input);
    assert_eq!(codes(&replies), ["500"]);
}

#[test]
fn a_message_over_the_limit_is_read_to_its_end_and_refused() {
    let mut m = machine(None);
    let mut input = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&[b'x'; MAX]);
    input.extend_from_slice(b"\r\n.\r\nNOOP\r\n");
    let (replies, delivered) = run(&mut m, &input);
    assert_eq!(codes(&replies), ["250", "250", "354", "552", "250"]);
    assert!(replies[3].contains("5.3.4"), "{}", replies[3]);
    assert!(delivered.is_empty());
    // Exactly the limit passes.
    let mut m = machine(None);
    let mut input = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&[b'x'; MAX - 2]);
    input.extend_from_slice(b"\r\n.\r\n");
    let (_, delivered) = run(&mut m, &input);
    assert_eq!(delivered[0].message.len(), MAX);
}

#[test]
fn a_shed_message_is_read_to_its_end_and_gets_452_and_the_next_one_goes() {
    let mut m = machine(None);
    let head = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\nSubject: a\r\n\r\n".to_vec();
    let (replies, _) = run(&mut m, &head);
    assert_eq!(codes(&replies), ["250", "250", "354"]);
    assert_eq!(m.buffered(), b"Subject: a\r\n\r\n".len());
    // The session found no memory for it: dropped from here on, read to
    // its end, which gets 452.
    m.shed();
    assert_eq!(m.buffered(), 0);
    let (replies, delivered) = run(&mut m, b"more text.\r\n.\r\n");
    assert_eq!(codes(&replies), ["452"]);
    assert!(replies[0].contains("4.3.1"), "{}", replies[0]);
    assert!(delivered.is_empty());
    // Commands again, and a shed outside DATA does nothing.
    m.shed();
    let input = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\nbody\r\n.\r\n";
    let (replies, delivered) = run(&mut m, input);
    assert_eq!(codes(&replies), ["250", "250", "354", "DEL"]);
    assert_eq!(delivered[0].message, b"body\r\n");
}

#[test]
fn a_line_without_end_is_taken_in_pieces_and_a_dot_inside_it_ends_nothing() {
    let mut m = Submission::new(
        Rules {
            max_message: 4 * MAX_PARTIAL_LINE,
            max_recipients: 1,
            senders: None,
        },
        Vec::new(),
        Vec::new(),
    );
    let mut buf = b"MAIL FROM:<s@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\n".to_vec();
    for _ in 0..3 {
        let _ = m.step(&mut buf);
    }
    buf.extend_from_slice(&vec![b'y'; MAX_PARTIAL_LINE]);
    assert_eq!(m.step(&mut buf), Step::NeedMore);
    assert!(buf.is_empty(), "the piece was taken");
    // ".\r\n" continuing that line is content, not the end.
    buf.extend_from_slice(b".\r\n.\r\n");
    match m.step(&mut buf) {
        Step::Deliver(e) => {
            assert_eq!(e.message.len(), MAX_PARTIAL_LINE + 3);
            assert!(e.message.ends_with(b"y.\r\n"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_fixed_account_takes_only_its_allowed_senders_every_transaction() {
    let mut m = machine(Some(&["scanner@x.test"]));
    let (replies, delivered) = run(
        &mut m,
        b"MAIL FROM:<Scanner@x.test>\r\nRCPT TO:<a@y.test>\r\nDATA\r\nhi\r\n.\r\n\
          MAIL FROM:<other@x.test>\r\nMAIL FROM:<>\r\n",
    );
    assert_eq!(codes(&replies), ["250", "250", "354", "DEL", "550", "550"]);
    assert_eq!(delivered.len(), 1);
}
