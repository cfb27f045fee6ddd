//! The end of a delegated sign-in: the local password its user chose with
//! it, and the tokens stored sealed under that password from their first
//! write. (Before, tokens waited unsealed until the first client login
//! bound its password: any local client that got there first chose it.)
//!
//! Callers ([`crate::admin`]'s page, the `authorize` command) have the
//! identity check of [`super::identity`] behind them already: a sign-in
//! replaces an existing entry (the password-change path) only once the
//! account's own user signed in.

use secrecy::{ExposeSecret, SecretString};

use super::password::{KdfParams, SealKey, random_salt};
use super::vault::{StoreError, StoredTokens, TokenStore};
use crate::config::AccountConfig;

/// The shortest local password taken at sign-in. The password is all that
/// stands between another local user (or any process, or an allowed LAN
/// host) and the mailbox; the login throttle slows online guessing, and
/// with Argon2id a copied token file resists offline guessing only if the
/// password is not tiny. Eight characters is NIST SP 800-63B's floor for
/// a memorised secret.
pub const MIN_PASSWORD_LEN: usize = 8;
/// The longest one taken: far above any real passphrase, and a bound on
/// what the KDF hashes for a page form (the form body is capped too).
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why a chosen password is refused. No variant carries the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error(
        "choose a local password for your mail client: it seals the tokens and is the one the \
         client logs in with"
    )]
    Missing,
    #[error("the local password is too short: use at least {MIN_PASSWORD_LEN} characters")]
    TooShort,
    #[error("the local password is too long: use at most {MAX_PASSWORD_LEN} characters")]
    TooLong,
    #[error("the two passwords differ: type the same password twice")]
    Differ,
}

/// A local password chosen at sign-in, checked for length (and typed twice
/// alike where it was typed twice). `Debug` does not show it.
#[derive(Clone)]
pub struct LocalPassword(SecretString);

impl std::fmt::Debug for LocalPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LocalPassword(<redacted>)")
    }
}

impl LocalPassword {
    /// `again`: the confirmation, where the password was typed twice.
    pub fn new(
        password: &SecretString,
        again: Option<&SecretString>,
    ) -> Result<LocalPassword, PasswordError> {
        let text = password.expose_secret();
        if text.is_empty() {
            return Err(PasswordError::Missing);
        }
        let chars = text.chars().count();
        if chars < MIN_PASSWORD_LEN {
            return Err(PasswordError::TooShort);
        }
        if text.len() > MAX_PASSWORD_LEN {
            return Err(PasswordError::TooLong);
        }
        if let Some(again) = again
            && !super::authcode::constant_time_eq(text.as_bytes(), again.expose_secret().as_bytes())
        {
            return Err(PasswordError::Differ);
        }
        Ok(LocalPassword(password.clone()))
    }

    pub fn secret(&self) -> &SecretString {
        &self.0
    }
}

/// Why a finished sign-in's tokens were not stored.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// A delegated account without a local password: nothing is stored unsealed.
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error("cannot derive the sealing key: {0}")]
    Kdf(String),
    #[error("cannot save the tokens: {0}")]
    Store(#[from] StoreError),
}

/// Stores a finished sign-in's tokens for `account`: sealed under a key
/// derived (with `kdf` and a new salt) from `password`, or, for an account
/// with `password_hash` (unattended; its password is in the configuration),
/// unsealed and owner-only as before. Blocking (the KDF and the write).
pub fn save_signed_in(
    store: &TokenStore,
    account: &AccountConfig,
    tokens: &StoredTokens,
    password: Option<&LocalPassword>,
    kdf: KdfParams,
) -> Result<(), SaveError> {
    if account.password_hash.is_some() {
        return Ok(store.save(&account.username, tokens)?);
    }
    let password = password.ok_or(PasswordError::Missing)?;
    let key = SealKey::derive(
        password.secret().expose_secret().as_bytes(),
        kdf,
        random_salt(),
    )
    .map_err(|e| SaveError::Kdf(e.to_string()))?;
    Ok(store.save_sealed(&account.username, tokens, &key)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> SecretString {
        SecretString::from(text.to_owned())
    }

    #[test]
    fn password_rules() {
        assert_eq!(
            LocalPassword::new(&s(""), None).unwrap_err(),
            PasswordError::Missing
        );
        assert_eq!(
            LocalPassword::new(&s("1234567"), None).unwrap_err(),
            PasswordError::TooShort
        );
        assert!(LocalPassword::new(&s("12345678"), None).is_ok());
        assert_eq!(
            LocalPassword::new(&s("correct horse"), Some(&s("correct hors"))).unwrap_err(),
            PasswordError::Differ
        );
        let p = LocalPassword::new(&s("correct horse"), Some(&s("correct horse"))).unwrap();
        assert!(!format!("{p:?}").contains("horse"));
        assert_eq!(
            LocalPassword::new(&s(&"x".repeat(MAX_PASSWORD_LEN + 1)), None).unwrap_err(),
            PasswordError::TooLong
        );
        // Characters, not bytes: eight accented letters are eight.
        assert!(LocalPassword::new(&s("éééééééé"), None).is_ok());
    }
}
