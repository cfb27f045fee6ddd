use super::*;

#[test]
fn authenticate_plain() {
    let alice = b64(b"\0alice@contoso.com\0secret");
    let shared = b64(b"shared@contoso.com\0alice@contoso.com\0secret");
    let empty_pw = b64(b"\0alice\0");
    let control = b64(b"\0al\nice\0pw");
    let cases: Vec<(String, Vec<Out>)> = vec![
        (
            format!("A1 AUTHENTICATE PLAIN {alice}\r\n"),
            vec![login("A1", "alice@contoso.com", "secret")],
        ),
        (
            format!("a1 authenticate plain {alice}\n"),
            vec![login("a1", "alice@contoso.com", "secret")],
        ),
        (
            format!("A1 AUTHENTICATE PLAIN {shared}\r\n"),
            vec![login("A1", "shared@contoso.com", "secret")],
        ),
        (
            format!("A1 AUTHENTICATE PLAIN {empty_pw}\r\n"),
            vec![login("A1", "alice", "")],
        ),
        (
            format!("A1 AUTHENTICATE PLAIN\r\n{alice}\r\n"),
            vec![reply("+ \r\n"), login("A1", "alice@contoso.com", "secret")],
        ),
        (
            format!("A1 AUTHENTICATE PLAIN\r\n{alice}\n"),
            vec![reply("+ \r\n"), login("A1", "alice@contoso.com", "secret")],
        ),
        (
            "A1 AUTHENTICATE PLAIN =\r\n".to_owned(),
            vec![reply(
                "A1 BAD Invalid PLAIN response: the PLAIN response must be authzid NUL authcid NUL password\r\n",
            )],
        ),
        (
            "A1 AUTHENTICATE PLAIN AGFsaWNl*\r\n".to_owned(),
            vec![reply(
                "A1 BAD Invalid PLAIN response: the response is not valid base64\r\n",
            )],
        ),
        (
            "A1 AUTHENTICATE PLAIN\r\n%%%\r\nA2 NOOP\r\n".to_owned(),
            vec![
                reply("+ \r\n"),
                reply("A1 BAD Invalid PLAIN response: the response is not valid base64\r\n"),
                reply("A2 OK NOOP completed\r\n"),
            ],
        ),
        (
            "A1 AUTHENTICATE PLAIN\r\n\r\n".to_owned(),
            vec![
                reply("+ \r\n"),
                reply(
                    "A1 BAD Invalid PLAIN response: the PLAIN response must be authzid NUL authcid NUL password\r\n",
                ),
            ],
        ),
        (
            "A1 AUTHENTICATE PLAIN\r\n*\r\nA2 NOOP\r\n".to_owned(),
            vec![
                reply("+ \r\n"),
                reply("A1 BAD AUTHENTICATE cancelled\r\n"),
                reply("A2 OK NOOP completed\r\n"),
            ],
        ),
        (
            format!("A1 AUTHENTICATE PLAIN {}\r\n", b64(b"\0\0pw")),
            vec![reply(
                "A1 BAD Invalid PLAIN response: the user name is empty\r\n",
            )],
        ),
        (
            format!("A1 AUTHENTICATE PLAIN {control}\r\n"),
            vec![reply(
                "A1 BAD The user name contains control characters\r\n",
            )],
        ),
        (
            "A1 AUTHENTICATE\r\n".to_owned(),
            vec![reply(
                "A1 BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n",
            )],
        ),
        (
            "A1 AUTHENTICATE PLAIN a b\r\n".to_owned(),
            vec![reply(
                "A1 BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n",
            )],
        ),
        (
            "A1 AUTHENTICATE PLAIN \r\n".to_owned(),
            vec![reply(
                "A1 BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n",
            )],
        ),
        (
            "A1 AUTHENTICATE \"PLAIN\"\r\n".to_owned(),
            vec![reply(
                "A1 BAD AUTHENTICATE expects a mechanism and an optional initial response\r\n",
            )],
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(session(input.as_bytes()), expected, "{input}");
    }
}

#[test]
fn authenticate_login() {
    let user = "+ VXNlcm5hbWU6\r\n";
    let pass = "+ UGFzc3dvcmQ6\r\n";
    let cases: Vec<(&[u8], Vec<Out>)> = vec![
        (
            b"A1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\n",
            vec![reply(user), reply(pass), login("A1", "alice", "secret")],
        ),
        (
            b"A1 authenticate login\nYWxpY2U=\nc2VjcmV0\n",
            vec![reply(user), reply(pass), login("A1", "alice", "secret")],
        ),
        (
            b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\nc2VjcmV0\r\n",
            vec![reply(pass), login("A1", "alice", "secret")],
        ),
        (
            b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\n=\r\n",
            vec![reply(pass), login("A1", "alice", "")],
        ),
        (
            b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\n\r\n",
            vec![reply(pass), login("A1", "alice", "")],
        ),
        (
            b"A1 AUTHENTICATE LOGIN =\r\n",
            vec![reply("A1 BAD The user name is empty\r\n")],
        ),
        (
            b"A1 AUTHENTICATE LOGIN\r\n\r\n",
            vec![reply(user), reply("A1 BAD The user name is empty\r\n")],
        ),
        (
            b"A1 AUTHENTICATE LOGIN\r\n*\r\n",
            vec![reply(user), reply("A1 BAD AUTHENTICATE cancelled\r\n")],
        ),
        (
            b"A1 AUTHENTICATE LOGIN\r\nYWxpY2U=\r\n*\r\nA2 NOOP\r\n",
            vec![
                reply(user),
                reply(pass),
                reply("A1 BAD AUTHENTICATE cancelled\r\n"),
                reply("A2 OK NOOP completed\r\n"),
            ],
        ),
        (
            b"A1 AUTHENTICATE LOGIN !!!\r\n",
            vec![reply(
                "A1 BAD Invalid user name: the response is not valid base64\r\n",
            )],
        ),
        (
            b"A1 AUTHENTICATE LOGIN\r\n/w==\r\n",
            vec![
                reply(user),
                reply("A1 BAD Invalid user name: the response is not valid UTF-8\r\n"),
            ],
        ),
        (
            b"A1 AUTHENTICATE LOGIN YWxpY2U=\r\n!!!\r\nA2 NOOP\r\n",
            vec![
                reply(pass),
                reply("A1 BAD Invalid password: the response is not valid base64\r\n"),
                reply("A2 OK NOOP completed\r\n"),
            ],
        ),
        (
            b"A1 AUTHENTICATE LOGIN YWwKaWNl\r\n",
            vec![reply(
                "A1 BAD The user name contains control characters\r\n",
            )],
        ),
    ];
    for (input, expected) in cases {
        assert_eq!(session(input), expected, "{}", text(input));
    }
}

#[test]
fn unsupported_mechanisms() {
    for input in [
        &b"A1 AUTHENTICATE XOAUTH2\r\n"[..],
        b"A1 AUTHENTICATE XOAUTH2 dXNlcj1hbGljZQFhdXRoPUJlYXJlciB4AQE=\r\n",
        b"A1 AUTHENTICATE OAUTHBEARER x\r\n",
        b"A1 AUTHENTICATE CRAM-MD5\r\n",
        b"A1 authenticate ntlm\r\n",
        b"A1 AUTHENTICATE GSSAPI\r\n",
        b"A1 AUTHENTICATE PLAINX\r\n",
    ] {
        assert_eq!(
            session(input),
            [reply(
                "A1 NO [CANNOT] Unsupported mechanism; use PLAIN or LOGIN\r\n"
            )],
            "{}",
            text(input)
        );
    }
}
