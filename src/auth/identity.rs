//! Who signed in: the user named by the id_token of a delegated sign-in,
//! checked against the account the sign-in was started for, before anything
//! is stored. Without this check, whoever completes a sign-in (any local
//! process can start one) could put their own Microsoft account's tokens
//! under someone else's address.
//!
//! The id_token is read without checking its signature: it comes straight
//! from the token endpoint over TLS whose certificate was verified, to the
//! client that sent the code, which is what OpenID Connect Core §3.1.3.7
//! allows for the token endpoint's own answer.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;

use crate::config::{AccountConfig, ProviderKind};

/// The scopes that make the token endpoint return an id_token naming the
/// user (`profile` for `preferred_username`, `email` for `email`).
pub(crate) const IDENTITY_SCOPES: [&str; 3] = ["openid", "profile", "email"];

/// An id_token bigger than this is not one (Entra's are 1–3 KB; groups
/// overage keeps them small); refused before decoding.
const MAX_ID_TOKEN_BYTES: usize = 64 * 1024;
/// A claim shown in an error is cut to this many characters (it comes from
/// the provider, but it is printed on the page and in the log).
const MAX_SHOWN_CLAIM: usize = 320;

/// Why a sign-in's user is not the account's. No variant carries a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Another user signed in than the account's address (or outside a
    /// catch-all's domain).
    #[error(
        "signed in as {signed_in}, but this sign-in was for {expected}: nothing was stored. \
         Sign in as {expected}"
    )]
    Mismatch { signed_in: String, expected: String },
    /// The token endpoint returned no id_token (the provider ignored `openid`).
    #[error(
        "the provider returned no id_token, so who signed in cannot be checked: nothing was \
         stored. Add \"openid\" to the account's scopes, or set verify_identity = false for a \
         provider that does not support OpenID Connect"
    )]
    Missing,
    /// The id_token names no user (no `preferred_username`, `upn` or `email`).
    #[error("the id_token names no user ({0}): nothing was stored")]
    Unreadable(String),
}

#[derive(Deserialize, Default)]
struct Claims {
    preferred_username: Option<String>,
    upn: Option<String>,
    email: Option<String>,
    email_verified: Option<serde_json::Value>,
    /// Entra: the email's domain is verified by the tenant that issued it.
    xms_edov: Option<serde_json::Value>,
}

fn truthy(value: &Option<serde_json::Value>) -> Option<bool> {
    match value.as_ref()? {
        serde_json::Value::Bool(b) => Some(*b),
        serde_json::Value::String(s) => Some(s.eq_ignore_ascii_case("true") || s == "1"),
        serde_json::Value::Number(n) => Some(n.as_u64() == Some(1)),
        _ => None,
    }
}

impl Claims {
    /// The names of the user the provider vouches for. Entra's `email` is
    /// an attribute any tenant's admin can set (the "nOAuth" problem), so
    /// for office365 it counts only when Entra says its domain is verified
    /// (`xms_edov`); elsewhere unless `email_verified` is false.
    fn names(&self, provider: ProviderKind) -> Vec<&str> {
        let email_counts = match provider {
            ProviderKind::Office365 => truthy(&self.xms_edov) == Some(true),
            _ => truthy(&self.email_verified) != Some(false),
        };
        let mut names: Vec<&str> = [&self.preferred_username, &self.upn]
            .into_iter()
            .flatten()
            .map(String::as_str)
            .collect();
        if email_counts && let Some(email) = &self.email {
            names.push(email);
        }
        names
    }

    /// Who signed in, for the error: the first name present, whatever its trust.
    fn shown(&self) -> Option<String> {
        [&self.preferred_username, &self.upn, &self.email]
            .into_iter()
            .flatten()
            .next()
            .map(|n| {
                n.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_SHOWN_CLAIM)
                    .collect()
            })
    }
}

fn decode(id_token: &str) -> Result<Claims, IdentityError> {
    if id_token.len() > MAX_ID_TOKEN_BYTES {
        return Err(IdentityError::Unreadable("it is too large".into()));
    }
    let mut parts = id_token.split('.');
    let payload = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(payload), Some(_), None) => payload,
        _ => return Err(IdentityError::Unreadable("it is not a JWT".into())),
    };
    let bytes = B64URL
        .decode(payload.trim_end_matches('='))
        .map_err(|_| IdentityError::Unreadable("its payload is not base64url".into()))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| IdentityError::Unreadable("its payload is not a JSON object".into()))
}

/// Whether `name` is the account's user: its address, or for an address
/// under a catch-all, any address of the catch-all's domain.
fn matches(account: &AccountConfig, name: &str) -> bool {
    match account.catch_all_domain() {
        Some(domain) => {
            name.len() > domain.len()
                && name
                    .get(name.len() - domain.len()..)
                    .is_some_and(|d| d.eq_ignore_ascii_case(domain))
        }
        None => name.eq_ignore_ascii_case(&account.username),
    }
}

/// What the check expects, in words.
fn expected(account: &AccountConfig) -> String {
    match account.catch_all_domain() {
        Some(domain) => format!("{} (an address {domain})", account.username),
        None => account.username.clone(),
    }
}

/// Checks that the user of `id_token` is `account`'s. An account that
/// opted out (`verify_identity = false`) passes, with a warning in the log.
pub(crate) fn verify(account: &AccountConfig, id_token: Option<&str>) -> Result<(), IdentityError> {
    if !account.verifies_identity() {
        tracing::warn!(account = %account.username,
            "verify_identity = false: the sign-in is stored without checking who signed in");
        return Ok(());
    }
    let claims = decode(id_token.ok_or(IdentityError::Missing)?)?;
    if claims
        .names(account.provider)
        .iter()
        .any(|n| matches(account, n))
    {
        return Ok(());
    }
    Err(match claims.shown() {
        Some(signed_in) => IdentityError::Mismatch {
            signed_in,
            expected: expected(account),
        },
        None => IdentityError::Unreadable("no preferred_username, upn or email".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(extra: &str) -> AccountConfig {
        toml::from_str(&format!(
            "username = \"alice@contoso.com\"\nprovider = \"office365\"\nclient_id = \"c\"\n{extra}"
        ))
        .unwrap()
    }

    fn jwt(claims: serde_json::Value) -> String {
        format!(
            "{}.{}.sig",
            B64URL.encode(br#"{"alg":"none"}"#),
            B64URL.encode(claims.to_string())
        )
    }

    #[test]
    fn the_address_must_be_the_users() {
        let a = account("");
        let ok = jwt(serde_json::json!({"preferred_username": "ALICE@contoso.com"}));
        assert_eq!(verify(&a, Some(&ok)), Ok(()));
        let upn = jwt(serde_json::json!({"upn": "alice@contoso.com", "preferred_username": "x"}));
        assert_eq!(verify(&a, Some(&upn)), Ok(()));
        let other = jwt(serde_json::json!({"preferred_username": "mallory@evil.example"}));
        let err = verify(&a, Some(&other)).unwrap_err();
        assert_eq!(
            err,
            IdentityError::Mismatch {
                signed_in: "mallory@evil.example".into(),
                expected: "alice@contoso.com".into()
            }
        );
        let text = err.to_string();
        assert!(text.contains("mallory@evil.example") && text.contains("alice@contoso.com"));
        assert_eq!(verify(&a, None), Err(IdentityError::Missing));
        assert!(matches!(
            verify(&a, Some("not-a-jwt")),
            Err(IdentityError::Unreadable(_))
        ));
    }

    #[test]
    fn an_unverified_email_does_not_count() {
        let a = account("");
        // nOAuth: another tenant's user whose mail attribute claims Alice's address.
        let forged = jwt(serde_json::json!({
            "preferred_username": "mallory@evil.onmicrosoft.com", "email": "alice@contoso.com"}));
        assert!(verify(&a, Some(&forged)).is_err());
        let verified = jwt(serde_json::json!({
            "preferred_username": "alice@contoso.onmicrosoft.com", "email": "alice@contoso.com",
            "xms_edov": true}));
        assert_eq!(verify(&a, Some(&verified)), Ok(()));
        let mut g = account("");
        g.provider = ProviderKind::Gmail;
        let google = jwt(serde_json::json!({"email": "alice@contoso.com", "email_verified": true}));
        assert_eq!(verify(&g, Some(&google)), Ok(()));
        let unverified =
            jwt(serde_json::json!({"email": "alice@contoso.com", "email_verified": false}));
        assert!(verify(&g, Some(&unverified)).is_err());
    }

    #[test]
    fn a_catch_all_takes_its_domain() {
        let all: AccountConfig = toml::from_str(
            "username = \"@contoso.com\"\nprovider = \"office365\"\nclient_id = \"c\"\n",
        )
        .unwrap();
        let bob = all.for_address("bob@contoso.com");
        let carol = jwt(serde_json::json!({"preferred_username": "carol@Contoso.com"}));
        assert_eq!(verify(&bob, Some(&carol)), Ok(()));
        let outsider = jwt(serde_json::json!({"preferred_username": "eve@notcontoso.com"}));
        let err = verify(&bob, Some(&outsider)).unwrap_err().to_string();
        assert!(
            err.contains("eve@notcontoso.com") && err.contains("@contoso.com"),
            "{err}"
        );
    }

    #[test]
    fn opting_out_skips_the_check() {
        let mut a = account("");
        a.provider = ProviderKind::Custom;
        a.verify_identity = Some(false);
        assert_eq!(verify(&a, None), Ok(()));
    }
}
