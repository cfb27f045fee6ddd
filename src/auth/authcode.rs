//! The authorization code grant with PKCE (RFC 7636, S256) and a checked
//! `state`: the sign-in in a browser.
//!
//! [`PendingSignIn::start`] makes the URL to open and remembers what the
//! answer must match; the provider sends the browser back to `redirect_uri`
//! with `code` and `state` (or `error`); [`finish_sign_in`] checks the state
//! and exchanges the code. Whoever serves `redirect_uri` (the `authorize`
//! command's loopback listener, a local web page) hands the query over.

use std::borrow::Cow;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use oauth2::{AuthorizationCode, PkceCodeVerifier, RedirectUrl};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::flows::{FlowError, client_auth_params, describe, sign_in_client, signed_in_tokens};
use super::http::HttpClient;
use super::password::fill_random;
use super::provider::endpoints;
use super::vault::StoredTokens;
use crate::config::{AccountConfig, ProviderKind};

/// How long a started sign-in may take before its answer is refused (the
/// provider's codes live about ten minutes; a person needs a few).
pub const SIGN_IN_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Random bytes of the PKCE verifier (43 base64url characters) and of `state`.
const RANDOM_BYTES: usize = 32;

/// A sign-in whose browser part is under way: what its answer must match.
/// `Debug` shows neither the state nor the verifier.
pub struct PendingSignIn {
    username: String,
    state: String,
    verifier: SecretString,
    redirect_uri: String,
    created_at: Instant,
}

impl std::fmt::Debug for PendingSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSignIn")
            .field("username", &self.username)
            .field("redirect_uri", &self.redirect_uri)
            .field("state", &"<redacted>")
            .field("verifier", &"<redacted>")
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl PendingSignIn {
    /// The authorize URL to open, with response_type=code, client_id,
    /// redirect_uri, scope, state, code_challenge (S256),
    /// code_challenge_method=S256, login_hint=<account address> and
    /// prompt=select_account (Gmail: also consent and access_type=offline,
    /// without which Google gives no refresh token on a repeated sign-in).
    pub fn start(
        account: &AccountConfig,
        redirect_uri: &str,
    ) -> Result<(String, PendingSignIn), FlowError> {
        let ep = endpoints(account);
        let authorize_url = ep.authorize_url.ok_or_else(|| {
            FlowError::Config(format!("account {} has no authorize_url", account.username))
        })?;
        let mut url = reqwest::Url::parse(&authorize_url)
            .map_err(|e| FlowError::Config(format!("authorize_url is not a URL: {e}")))?;
        RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|e| FlowError::Config(format!("the redirect URI is not a URL: {e}")))?;
        let state = random_text();
        let verifier = SecretString::from(random_text());
        let challenge = B64URL.encode(Sha256::digest(verifier.expose_secret().as_bytes()));
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("response_type", "code")
                .append_pair("client_id", &account.client_id)
                .append_pair("redirect_uri", redirect_uri)
                .append_pair("scope", &ep.scopes.join(" "))
                .append_pair("state", &state)
                .append_pair("code_challenge", &challenge)
                .append_pair("code_challenge_method", "S256");
            // A catch-all account (`@domain`) has no address to hint.
            if !account.username.starts_with('@') {
                query.append_pair("login_hint", &account.username);
            }
            if account.provider == ProviderKind::Gmail {
                query
                    .append_pair("prompt", "select_account consent")
                    .append_pair("access_type", "offline");
            } else {
                query.append_pair("prompt", "select_account");
            }
        }
        Ok((
            url.into(),
            PendingSignIn {
                username: account.username.clone(),
                state,
                verifier,
                redirect_uri: redirect_uri.to_owned(),
                created_at: Instant::now(),
            },
        ))
    }

    /// The `state` sent in the URL (to find the pending sign-in an answer belongs to).
    pub fn state(&self) -> &str {
        &self.state
    }

    /// The account this sign-in is for.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The redirect URI the URL names (the exchange must repeat it).
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// When [`PendingSignIn::start`] made it.
    pub fn created_at(&self) -> Instant {
        self.created_at
    }

    /// Whether it is older than [`SIGN_IN_LIFETIME`].
    pub fn is_expired(&self) -> bool {
        self.created_at.elapsed() > SIGN_IN_LIFETIME
    }
}

/// Checks `state` (constant-time compare) and exchanges the code (with the
/// code_verifier and the same redirect_uri) for tokens, which are given
/// only if the id_token's user is the account's ([`FlowError::Identity`]).
pub async fn finish_sign_in(
    pending: PendingSignIn,
    account: &AccountConfig,
    http: &HttpClient,
    state: &str,
    code: &str,
) -> Result<StoredTokens, FlowError> {
    let http = &http.for_account(account);
    if !constant_time_eq(pending.state.as_bytes(), state.as_bytes()) {
        return Err(FlowError::StateMismatch);
    }
    if !pending.username.eq_ignore_ascii_case(&account.username) {
        return Err(FlowError::WrongAccount);
    }
    if pending.is_expired() {
        return Err(FlowError::TimedOut(SIGN_IN_LIFETIME));
    }
    if code.is_empty() {
        return Err(FlowError::MissingCode);
    }
    let redirect = RedirectUrl::new(pending.redirect_uri.clone())
        .map_err(|e| FlowError::Config(format!("the redirect URI is not a URL: {e}")))?;
    let client = sign_in_client(account)?;
    let auth = client_auth_params(account)?;
    let mut request = client
        .exchange_code(AuthorizationCode::new(code.to_owned()))
        .set_pkce_verifier(PkceCodeVerifier::new(
            pending.verifier.expose_secret().to_owned(),
        ))
        .set_redirect_uri(Cow::Owned(redirect));
    for (name, value) in &auth {
        request = request.add_extra_param(*name, value.expose_secret().to_owned());
    }
    let send = move |req| {
        let http = http.clone();
        async move { http.send(req).await }
    };
    let response = request
        .request_async(&send)
        .await
        .map_err(|e| FlowError::Token(describe(e)))?;
    signed_in_tokens(account, &response)
}

/// The error of an authorize redirect (`error=access_denied&error_description=…`),
/// if it is one; `None` for an answer with a code. The provider's text is
/// escaped ([`crate::escape::log_text`]: control characters, line
/// separators and bidi overrides written out) and cut short, as it reaches
/// a terminal, a log line and the page alike, and whoever made the link
/// the browser followed chose it.
pub fn callback_error(params: &HashMap<String, String>) -> Option<FlowError> {
    let error = params.get("error")?;
    let shown = |text: &str, max: usize| -> String {
        crate::escape::log_text(text)
            .to_string()
            .chars()
            .take(max)
            .collect()
    };
    Some(FlowError::Denied {
        error: shown(error, 100),
        description: params.get("error_description").map(|d| shown(d, 500)),
    })
}

/// 32 random bytes, base64url: a PKCE verifier (RFC 7636: 43–128
/// characters of the unreserved set) or a `state`.
fn random_text() -> String {
    let mut bytes = zeroize::Zeroizing::new([0u8; RANDOM_BYTES]);
    fill_random(&mut bytes[..]);
    B64URL.encode(&bytes[..])
}

/// Equality that takes as long whatever the first differing byte is
/// (`subtle`; only the length may show, and a `state` has a fixed one).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(provider: &str) -> AccountConfig {
        toml::from_str(&format!(
            "username = \"alice@contoso.com\"\nprovider = \"{provider}\"\nclient_id = \"cid\"\n\
             flow = \"authorization_code\""
        ))
        .unwrap()
    }

    fn query(url: &str) -> HashMap<String, String> {
        reqwest::Url::parse(url)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }

    #[test]
    fn url_carries_pkce_state_and_hints() {
        let (url, pending) =
            PendingSignIn::start(&account("office365"), "http://localhost:1234/callback").unwrap();
        assert!(url.starts_with("https://login.microsoftonline.com/common/oauth2/v2.0/authorize?"));
        let q = query(&url);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "cid");
        assert_eq!(q["redirect_uri"], "http://localhost:1234/callback");
        assert!(q["scope"].contains("https://outlook.office.com/IMAP.AccessAsUser.All"));
        assert!(q["scope"].contains("offline_access"));
        assert!(
            q["scope"].split(' ').any(|s| s == "openid"),
            "who signed in"
        );
        assert_eq!(q["state"], pending.state());
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(
            q["code_challenge"],
            B64URL.encode(Sha256::digest(pending.verifier.expose_secret().as_bytes()))
        );
        assert_eq!(pending.verifier.expose_secret().len(), 43);
        assert_eq!(q["login_hint"], "alice@contoso.com");
        assert_eq!(q["prompt"], "select_account");
        assert_eq!(pending.username(), "alice@contoso.com");
        assert_eq!(pending.redirect_uri(), "http://localhost:1234/callback");
        assert!(!url.contains(pending.verifier.expose_secret()));
        let debug = format!("{pending:?}");
        assert!(
            !debug.contains(pending.state()) && !debug.contains(pending.verifier.expose_secret())
        );
        // Fresh randomness every time.
        let (_, again) =
            PendingSignIn::start(&account("office365"), "http://localhost:1234/callback").unwrap();
        assert_ne!(again.state(), pending.state());

        let (url, _) = PendingSignIn::start(&account("gmail"), "http://localhost:1/cb").unwrap();
        assert!(url.starts_with("https://accounts.google.com/o/oauth2/v2/auth?"));
        let q = query(&url);
        assert_eq!(q["scope"], "https://mail.google.com/ openid profile email");
        assert_eq!(q["access_type"], "offline");
        assert!(q["prompt"].contains("consent"));
    }

    #[test]
    fn callback_errors() {
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert!(callback_error(&params(&[("code", "c"), ("state", "s")])).is_none());
        match callback_error(&params(&[
            ("error", "access_denied"),
            (
                "error_description",
                "AADSTS65004: User declined\r\nto consent.",
            ),
        ])) {
            Some(FlowError::Denied { error, description }) => {
                assert_eq!(error, "access_denied");
                assert_eq!(
                    description.unwrap(),
                    "AADSTS65004: User declined\\r\\nto consent."
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
