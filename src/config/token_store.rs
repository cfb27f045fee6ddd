//! `token_store` in `[proxy]`: where the tokens live. The files under
//! `state_dir` (the default), or a Redis (or Valkey) server that several
//! proxies share. The URL may hold a password; it is kept as a secret and
//! shown only redacted ([`RedisUrl::shown`], `Debug`).

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// The environment variable with the Redis password, for a `token_store`
/// URL without one (so the configuration file need not hold it).
pub const REDIS_PASSWORD_ENV: &str = "XOAUTH2_PROXY_REDIS_PASSWORD";

/// The name in every key when `token_store_name` is not set.
pub const DEFAULT_TOKEN_STORE_NAME: &str = "default";

/// The longest `token_store_name`: it is part of every key.
pub const MAX_TOKEN_STORE_NAME: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum TokenStoreSetting {
    /// `"files"`: one file per account under `state_dir/tokens/`.
    #[default]
    Files,
    /// `redis://…` or `rediss://…` (TLS).
    Redis(RedisUrl),
}

impl TryFrom<String> for TokenStoreSetting {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        if text == "files" {
            return Ok(TokenStoreSetting::Files);
        }
        RedisUrl::parse(&text).map(TokenStoreSetting::Redis)
    }
}

/// A checked `redis://` or `rediss://` URL.
#[derive(Clone)]
pub struct RedisUrl {
    url: SecretString,
    shown: String,
    tls: bool,
}

impl PartialEq for RedisUrl {
    fn eq(&self, other: &Self) -> bool {
        self.url.expose_secret() == other.url.expose_secret()
    }
}
impl Eq for RedisUrl {}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", self.shown)
    }
}

impl RedisUrl {
    pub fn parse(text: &str) -> Result<RedisUrl, String> {
        let bad = || {
            "must be \"files\" or a Redis URL: redis://[user[:password]@]host[:port][/db] \
             (rediss:// for TLS)"
                .to_owned()
        };
        let url = url::Url::parse(text).map_err(|_| bad())?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            _ => return Err(bad()),
        };
        if url.host_str().is_none_or(str::is_empty) {
            return Err(format!("{} (the host is missing)", bad()));
        }
        let db = url.path().trim_start_matches('/');
        if !db.is_empty() && db.parse::<u32>().is_err() {
            return Err(format!("{} (the database `{db}` is not a number)", bad()));
        }
        let mut shown = url.clone();
        if url.password().is_some() {
            let _ = shown.set_password(Some("***"));
        }
        Ok(RedisUrl {
            url: SecretString::from(text.to_owned()),
            shown: shown.to_string(),
            tls,
        })
    }

    /// The URL as given (with its password, if any): for the client only.
    pub fn expose(&self) -> &str {
        self.url.expose_secret()
    }

    /// The URL with its password replaced by `***`, for messages.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    pub fn tls(&self) -> bool {
        self.tls
    }
}

/// Whether `name` may name the configuration in Redis keys.
pub fn check_store_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_TOKEN_STORE_NAME {
        return Err(format!("must be 1 to {MAX_TOKEN_STORE_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("may hold only letters, digits, `-`, `_` and `.`".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_shown_without_password() {
        let url = RedisUrl::parse("redis://app:s3cret@cache.example:6380/2").unwrap();
        assert_eq!(url.shown(), "redis://app:***@cache.example:6380/2");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(RedisUrl::parse("rediss://cache.example").unwrap().tls());
        for bad in ["http://x", "redis://", "redis://h/abc", "files2"] {
            assert!(
                TokenStoreSetting::try_from(bad.to_owned()).is_err(),
                "{bad}"
            );
        }
        assert_eq!(
            TokenStoreSetting::try_from("files".to_owned()),
            Ok(TokenStoreSetting::Files)
        );
    }

    #[test]
    fn store_names() {
        assert!(check_store_name("office-1.prod").is_ok());
        for bad in ["", "a:b", "a b", &"x".repeat(65)] {
            assert!(check_store_name(bad).is_err(), "{bad:?}");
        }
    }
}
