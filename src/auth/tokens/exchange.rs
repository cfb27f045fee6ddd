//! One refresh-token exchange with the token endpoint and the conditional
//! write of its result, and the sorting of a failed request into what the
//! caller must do about it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oauth2::basic::BasicErrorResponseType;
use oauth2::{RefreshToken, RequestTokenError, TokenResponse};
use secrecy::{ExposeSecret, SecretString};

use super::state::AccountTokens;
use super::{LIFETIME_WITHOUT_EXPIRY, TokenError, TokenManager, replaced, unix_secs};
use crate::auth::http::{HttpClient, HttpError};
use crate::auth::password::SealKey;
use crate::auth::vault::{Entry, StoredTokens, TokenStore};

/// How one refresh ended.
pub(super) enum Outcome {
    /// New tokens, on disk (or kept in memory if the disk refused).
    Refreshed(Refreshed),
    /// The endpoint (or the request) failed; the tokens are as they were.
    Failed(Failure),
    /// Another process replaced or removed the entry meanwhile: its tokens
    /// win, and this process starts over from the disk.
    Replaced(TokenError),
}

/// The outcome of one refresh-token exchange, already on disk.
pub(super) struct Refreshed {
    pub(super) access: SecretString,
    pub(super) expires_at: SystemTime,
    pub(super) lifetime: Duration,
    pub(super) refresh_token: SecretString,
}

impl TokenManager {
    pub(super) async fn save_sealed(
        &self,
        username: &str,
        tokens: StoredTokens,
        key: Arc<SealKey>,
        expect: Expect,
    ) -> Result<Saved, String> {
        save_to(self.store.clone(), username, tokens, Some(key), expect).await
    }
}

/// The fingerprint the entry must still have for a write to go ahead (a
/// shared store: the entry read under the refresh lease). `None` inside:
/// there was no entry.
pub(super) type Fence = Option<[u8; 32]>;

/// [`save_to`], and with a `fence` only if the entry is byte for byte the
/// one read before the exchange.
pub(super) async fn save_to(
    store: Arc<TokenStore>,
    username: &str,
    tokens: StoredTokens,
    key: Option<Arc<SealKey>>,
    expect: Expect,
) -> Result<Saved, String> {
    save_fenced(store, username, tokens, key, expect, None).await
}

/// One refresh-token exchange and the write of what it returned: the new
/// refresh token is on disk before the access token is handed out or cached.
pub(super) async fn exchange_and_save(
    account: &AccountTokens,
    http: &HttpClient,
    store: Arc<TokenStore>,
    refresh_token: SecretString,
    key: Option<Arc<SealKey>>,
    fence: Option<Fence>,
) -> Outcome {
    let username = account.config.username.clone();
    let response =
        match exchange_refresh(account, http, &refresh_token, &account.endpoints.scopes).await {
            Ok(response) => response,
            Err(failure) => return Outcome::Failed(failure),
        };
    let refresh_token_used = refresh_token.clone();
    let access = SecretString::from(response.access_token().secret().to_owned());
    let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
    let expires_at = SystemTime::now() + lifetime;
    let new_refresh = response
        .refresh_token()
        .map(|r| SecretString::from(r.secret().to_owned()))
        .unwrap_or(refresh_token);
    let stored = StoredTokens {
        refresh_token: Some(new_refresh.clone()),
        access_token: Some(access.clone()),
        expires_at: Some(unix_secs(expires_at)),
    };
    let expect = match &key {
        Some(key) => Expect::SealedWith(key.clone()),
        None => Expect::Unsealed(Some(refresh_token_used)),
    };
    match save_fenced(store, &username, stored, key, expect, fence).await {
        Ok(Saved::Written) => {}
        Ok(Saved::Replaced) => {
            tracing::warn!(account = %username,
                "the stored tokens were replaced or removed by another process during a refresh; \
                 they are kept, and the refresh's result is dropped");
            return Outcome::Replaced(replaced(&username));
        }
        // If the disk refuses, keep the refresh token in memory so it is not
        // lost while this process runs, and say so loudly.
        Err(e) => {
            tracing::error!(account = %username, error = %e, "cannot save the rotated refresh token; it is kept in memory until the next successful write");
        }
    }
    Outcome::Refreshed(Refreshed {
        access,
        expires_at,
        lifetime,
        refresh_token: new_refresh,
    })
}

/// What the entry on disk must still be for a write to go ahead: a writer
/// in another process (`authorize`, `forget`) may have replaced it since
/// this process read it, and then its tokens win. This is the generation
/// check; the store's lock makes check and write one step across processes.
pub(super) enum Expect {
    /// Sealed under this key.
    SealedWith(Arc<SealKey>),
    /// Unsealed, holding this refresh token.
    Unsealed(Option<SecretString>),
}

impl Expect {
    fn holds(&self, entry: Option<&Entry>) -> bool {
        let same = |a: &Option<SecretString>, b: &Option<SecretString>| match (a, b) {
            (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
            (None, None) => true,
            _ => false,
        };
        match (self, entry) {
            (Expect::SealedWith(key), Some(Entry::Sealed(sealed))) => sealed.key_matches(key),
            (Expect::Unsealed(rt), Some(Entry::Unsealed(tokens))) => {
                same(rt, &tokens.refresh_token)
            }
            _ => false,
        }
    }
}

/// Whether a conditional write happened.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Saved {
    Written,
    /// The entry on disk was no longer the one expected; left as it is.
    Replaced,
}

/// Writes `tokens` sealed with `key`, or unsealed without one, under the
/// store's cross-process lock, if the entry on disk is still as `expect`s
/// (and, with a `fence`, still has that fingerprint).
pub(super) async fn save_fenced(
    store: Arc<TokenStore>,
    username: &str,
    tokens: StoredTokens,
    key: Option<Arc<SealKey>>,
    expect: Expect,
    fence: Option<Fence>,
) -> Result<Saved, String> {
    let name = username.to_owned();
    tokio::task::spawn_blocking(move || {
        let lock = store.lock()?;
        if !expect.holds(lock.load_entry(&name)?.as_ref()) {
            return Ok(Saved::Replaced);
        }
        if let Some(fence) = fence
            && lock.fingerprint(&name)? != fence
        {
            return Ok(Saved::Replaced);
        }
        match key {
            Some(key) => lock.save_sealed(&name, &tokens, &key),
            None => lock.save(&name, &tokens),
        }
        .map(|()| Saved::Written)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e: crate::auth::vault::StoreError| e.to_string())
}

/// The refresh token redeemed for `scopes` (the account's own, or Graph's
/// for `graph.rs`: one resource per request).
pub(super) async fn exchange_refresh(
    account: &AccountTokens,
    http: &HttpClient,
    refresh_token: &SecretString,
    scopes: &[String],
) -> Result<oauth2::basic::BasicTokenResponse, Failure> {
    let http = &http.for_account(&account.config);
    let config_failure =
        |e: crate::auth::flows::FlowError| Failure::new(TokenError::Configuration(e.to_string()));
    let client = crate::auth::flows::token_client(&account.config).map_err(config_failure)?;
    let auth = crate::auth::flows::client_auth_params(&account.config).map_err(config_failure)?;
    let refresh = RefreshToken::new(refresh_token.expose_secret().to_owned());
    let client_http = http.clone();
    let http = move |req| {
        let client_http = client_http.clone();
        async move { client_http.send(req).await }
    };
    let mut request = client.exchange_refresh_token(&refresh);
    for scope in scopes {
        request = request.add_scope(oauth2::Scope::new(scope.clone()));
    }
    for (name, value) in &auth {
        request = request.add_extra_param(*name, value.expose_secret().to_owned());
    }
    request
        .request_async(&http)
        .await
        .map_err(|e| classify(&account.config.username, e))
}

pub(super) struct Failure {
    pub(super) error: TokenError,
    pub(super) retry_after: Option<Duration>,
    /// The endpoint itself asked for the wait (a 429 or a `Retry-After`):
    /// client logins do not probe before it ends.
    pub(super) firm: bool,
}

impl Failure {
    /// A transient failure without a wait asked by the endpoint.
    pub(super) fn transient(error: TokenError) -> Failure {
        Failure::new(error)
    }

    fn new(error: TokenError) -> Failure {
        Failure {
            error,
            retry_after: None,
            firm: false,
        }
    }
}

/// Sorts a failed token request into what the caller must do about it.
/// Branches on the OAuth `error` code, never on AADSTS numbers (they change).
pub(super) fn classify(
    username: &str,
    e: RequestTokenError<HttpError, oauth2::basic::BasicErrorResponse>,
) -> Failure {
    let sign_in = |why: &str| {
        TokenError::NeedsSignIn(format!(
            "the sign-in of {username} {why}: run `xoauth2-proxy authorize {username}`"
        ))
    };
    match e {
        RequestTokenError::ServerResponse(resp) => {
            let code = resp.error().as_ref().to_owned();
            let error = match resp.error() {
                BasicErrorResponseType::InvalidGrant => {
                    sign_in("has expired or was revoked (invalid_grant)")
                }
                BasicErrorResponseType::InvalidClient
                | BasicErrorResponseType::UnauthorizedClient => TokenError::Configuration(format!(
                    "the token endpoint refused the app ({code}): check client_id and client_secret of {username}"
                )),
                BasicErrorResponseType::InvalidScope => TokenError::Configuration(format!(
                    "the token endpoint refused the scopes ({code}): check scopes of {username}"
                )),
                BasicErrorResponseType::Extension(ext)
                    if ext == "interaction_required" || ext == "consent_required" =>
                {
                    sign_in(&format!("needs the user again ({ext})"))
                }
                BasicErrorResponseType::Extension(ext) if ext == "temporarily_unavailable" => {
                    TokenError::Transient("the token endpoint is temporarily unavailable".into())
                }
                _ => TokenError::Configuration(format!(
                    "the token endpoint refused the refresh ({code})"
                )),
            };
            Failure::new(error)
        }
        RequestTokenError::Request(HttpError::Status {
            status,
            retry_after,
        }) => Failure {
            error: TokenError::Transient(format!(
                "the token endpoint is not available (HTTP {status}); try again shortly"
            )),
            retry_after,
            firm: status == 429,
        },
        RequestTokenError::Request(HttpError::Transport(text)) => {
            Failure::new(TokenError::Transient(text))
        }
        RequestTokenError::Parse(_, _) => Failure::new(TokenError::Transient(
            "the token endpoint sent an answer that is not a token response".into(),
        )),
        RequestTokenError::Other(text) => Failure::new(TokenError::Transient(format!(
            "token request failed: {text}"
        ))),
    }
}
