//! SASL pieces: PLAIN and LOGIN decoding on the client side, XOAUTH2 encoding
//! and error-challenge decoding on the upstream side. Pure functions over bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// What a client presented to log in. The password never leaves this type
/// except to be checked.
pub struct Credentials {
    pub username: String,
    pub password: SecretString,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The standard LOGIN challenges, base64 of `Username:` and `Password:`.
/// Outlook and some scanners compare them byte for byte.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("the response is not valid base64")]
    Base64,
    #[error("the response is not valid UTF-8")]
    Utf8,
    #[error("the PLAIN response must be authzid NUL authcid NUL password")]
    PlainShape,
    #[error("the user name is empty")]
    EmptyUser,
    #[error("the user name contains control characters")]
    ControlInUser,
}

/// A user name goes into log lines and into the upstream XOAUTH2 string
/// (`user=…\x01`), where a control character (CR, LF, NUL, `\x01`, ESC …)
/// could forge a line or a field: such names are refused in every protocol,
/// before any lookup.
pub fn check_username(username: &str) -> Result<(), SaslError> {
    if username.is_empty() {
        Err(SaslError::EmptyUser)
    } else if username.chars().any(char::is_control) {
        Err(SaslError::ControlInUser)
    } else {
        Ok(())
    }
}

/// Decodes one base64 client response. `=` is the empty response (RFC 4959).
pub fn decode_response(b64: &[u8]) -> Result<Zeroizing<Vec<u8>>, SaslError> {
    let trimmed = trim_ascii(b64);
    if trimmed == b"=" {
        return Ok(Zeroizing::new(Vec::new()));
    }
    B64.decode(trimmed)
        .map(Zeroizing::new)
        .map_err(|_| SaslError::Base64)
}

/// Decodes a PLAIN message (RFC 4616): `[authzid] NUL authcid NUL passwd`.
/// When an authzid is given it names the mailbox; otherwise the authcid does.
pub fn decode_plain(b64: &[u8]) -> Result<Credentials, SaslError> {
    let raw = decode_response(b64)?;
    let mut parts = raw.splitn(3, |&b| b == 0);
    let authzid = parts.next().ok_or(SaslError::PlainShape)?;
    let authcid = parts.next().ok_or(SaslError::PlainShape)?;
    let password = parts.next().ok_or(SaslError::PlainShape)?;
    let user = if authzid.is_empty() { authcid } else { authzid };
    let username = std::str::from_utf8(user).map_err(|_| SaslError::Utf8)?;
    check_username(username)?;
    let password = std::str::from_utf8(password).map_err(|_| SaslError::Utf8)?;
    Ok(Credentials {
        username: username.to_owned(),
        password: SecretString::from(password.to_owned()),
    })
}

/// Decodes one LOGIN response (user name or password) to text.
pub fn decode_login_part(b64: &[u8]) -> Result<Zeroizing<String>, SaslError> {
    let raw = decode_response(b64)?;
    let text = std::str::from_utf8(&raw).map_err(|_| SaslError::Utf8)?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// The XOAUTH2 initial response, base64 encoded:
/// `user=<user>\x01auth=Bearer <token>\x01\x01`.
pub fn xoauth2_response(user: &str, access_token: &SecretString) -> Zeroizing<String> {
    let raw = Zeroizing::new(format!(
        "user={user}\x01auth=Bearer {}\x01\x01",
        access_token.expose_secret()
    ));
    Zeroizing::new(B64.encode(raw.as_bytes()))
}

/// What an XOAUTH2 error challenge said (Google-style servers and Dovecot send
/// base64 JSON such as `{"status":"401","schemes":"bearer","scope":"mail"}`).
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ErrorChallenge {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub schemes: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
}

/// Decodes an error challenge; anything undecodable yields `None` (it is only
/// used for log lines, never for a decision).
pub fn decode_error_challenge(b64: &[u8]) -> Option<ErrorChallenge> {
    let raw = B64.decode(trim_ascii(b64)).ok()?;
    serde_json::from_slice(&raw).ok()
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &[u8]) -> Vec<u8> {
        B64.encode(s).into_bytes()
    }

    #[test]
    fn plain_table() {
        let ok: &[(&[u8], &str, &str)] = &[
            (b"\0alice@contoso.com\0pw", "alice@contoso.com", "pw"),
            (
                b"shared@contoso.com\0alice@contoso.com\0pw",
                "shared@contoso.com",
                "pw",
            ),
            (b"\0alice\0", "alice", ""),
            (b"\0alice\0p\0w", "alice", "p\0w"),
            (b"\0al ice\0\xc3\xa9t\xc3\xa9", "al ice", "\u{e9}t\u{e9}"),
        ];
        for (raw, user, pass) in ok {
            let c = decode_plain(&b64(raw)).unwrap();
            assert_eq!(c.username, *user);
            assert_eq!(c.password.expose_secret(), *pass);
        }
        let bad: &[(&[u8], SaslError)] = &[
            (b"!!!", SaslError::Base64),
            (b"=", SaslError::PlainShape),
            (b"", SaslError::PlainShape),
        ];
        for (input, err) in bad {
            assert_eq!(decode_plain(input).unwrap_err(), *err, "{input:?}");
        }
        assert_eq!(
            decode_plain(&b64(b"alice")).unwrap_err(),
            SaslError::PlainShape
        );
        assert_eq!(
            decode_plain(&b64(b"\0\0pw")).unwrap_err(),
            SaslError::EmptyUser
        );
        assert_eq!(
            decode_plain(&b64(b"\0\xff\0pw")).unwrap_err(),
            SaslError::Utf8
        );
        for user in [
            &b"a\nb"[..],
            b"a\rb",
            b"a\x01b",
            b"\x1b[31m",
            b"a\x7f",
            b"a\xc2\x85",
        ] {
            let mut raw = b"\0".to_vec();
            raw.extend_from_slice(user);
            raw.extend_from_slice(b"\0pw");
            assert_eq!(
                decode_plain(&b64(&raw)).unwrap_err(),
                SaslError::ControlInUser,
                "{user:?}"
            );
        }
        // The authzid names the mailbox when given: it is checked too.
        assert_eq!(
            decode_plain(&b64(b"ceo\n@x\0alice\0pw")).unwrap_err(),
            SaslError::ControlInUser
        );
    }

    #[test]
    fn login_parts_and_empty_response() {
        assert_eq!(decode_login_part(b"YWxpY2U=").unwrap().as_str(), "alice");
        assert_eq!(decode_login_part(b"=").unwrap().as_str(), "");
        assert_eq!(decode_login_part(b" YWxpY2U= ").unwrap().as_str(), "alice");
        assert_eq!(decode_login_part(b"YWxp*").unwrap_err(), SaslError::Base64);
    }

    #[test]
    fn xoauth2_encoding() {
        let tok = SecretString::from("ya29.token".to_owned());
        let out = xoauth2_response("alice@contoso.com", &tok);
        let raw = B64.decode(out.as_bytes()).unwrap();
        assert_eq!(
            raw,
            b"user=alice@contoso.com\x01auth=Bearer ya29.token\x01\x01"
        );
    }

    #[test]
    fn error_challenge() {
        let c = decode_error_challenge(&b64(
            br#"{"status":"401","schemes":"bearer","scope":"mail"}"#,
        ))
        .unwrap();
        assert_eq!(c.status.as_deref(), Some("401"));
        assert_eq!(c.scope.as_deref(), Some("mail"));
        assert!(decode_error_challenge(b"not base64!").is_none());
        assert!(decode_error_challenge(&b64(b"not json")).is_none());
    }
}
