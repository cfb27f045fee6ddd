//! OAuth grants that obtain an account's tokens: the device code grant, the
//! client credentials grant (app-only), and the app's client authentication
//! (a secret, or a certificate's signed assertion) that every token request
//! of a confidential client carries. The authorization code grant is in
//! [`super::authcode`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth2::basic::{
    BasicClient, BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenResponse, BasicTokenType,
};
use oauth2::{
    AuthType, Client, ClientId, DeviceAuthorizationUrl, EndpointNotSet, EndpointSet,
    ExtraTokenFields, RequestTokenError, Scope, StandardRevocableToken, StandardTokenResponse,
    TokenResponse, TokenUrl,
};
use oauth2::{DeviceAuthorizationResponse, ExtraDeviceAuthorizationFields};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::assertion::{CLIENT_ASSERTION_TYPE, ClientCertificate};
use super::http::{HttpClient, HttpError};
use super::identity::{self, IdentityError};
use super::provider::endpoints;
use super::vault::StoredTokens;
use crate::config::AccountConfig;

pub use super::authcode::{PendingSignIn, callback_error, finish_sign_in};

/// Assumed lifetime of an access token whose response had no `expires_in`.
/// Short, so a wrong guess costs an early refresh rather than a failed login.
/// (Here rather than in `tokens`, which uses this module, not the reverse.)
pub const LIFETIME_WITHOUT_EXPIRY: Duration = Duration::from_secs(10 * 60);

/// Microsoft adds a ready-made sentence for the user to the device response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeviceFields {
    #[serde(default)]
    pub message: Option<String>,
}
impl ExtraDeviceAuthorizationFields for DeviceFields {}

/// Why a sign-in did not give tokens. No variant carries a secret (a code,
/// a verifier, a token, a client secret or key).
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The account's settings cannot work (a missing URL, an unreadable key).
    #[error("{0}")]
    Config(String),
    #[error("the device code request failed: {0}")]
    DeviceRequest(String),
    /// The token endpoint refused or failed the exchange.
    #[error("sign-in did not complete: {0}")]
    Token(String),
    /// The redirect's `state` is not the one this sign-in sent: another
    /// page's (or an attacker's) redirect, refused.
    #[error("the sign-in answer does not belong to this sign-in (state mismatch); start again")]
    StateMismatch,
    /// The provider sent the user back with an error (`access_denied`: the
    /// user declined, or an admin must consent first).
    #[error("the provider refused the sign-in ({error}){}", describe_denial(.description))]
    Denied {
        error: String,
        description: Option<String>,
    },
    /// The redirect carried neither a code nor an error.
    #[error("the sign-in answer carries no authorization code")]
    MissingCode,
    /// A pasted answer (`authorize --paste`) that could not be used.
    #[error(transparent)]
    Paste(#[from] super::paste::PasteError),
    /// The sign-in was not completed in time.
    #[error("the sign-in was not completed within {} minutes; start again", .0.as_secs() / 60)]
    TimedOut(Duration),
    /// A [`super::authcode::PendingSignIn`] used for another account.
    #[error("this sign-in was started for another account")]
    WrongAccount,
    /// Someone other than the account's user signed in (or the answer does
    /// not say who): nothing is stored.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// The OpenID Connect part of a sign-in's token response: the id_token that
/// says who signed in. `Debug` does not show it.
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct IdTokenFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
}
impl ExtraTokenFields for IdTokenFields {}

impl std::fmt::Debug for IdTokenFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTokenFields")
            .field("id_token", &self.id_token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// A delegated sign-in's token response (with its id_token).
pub(crate) type SignInResponse = StandardTokenResponse<IdTokenFields, BasicTokenType>;

/// An oauth2 client whose token responses keep the id_token: for the
/// grants of a delegated sign-in (authorization code, device code).
pub(crate) type SignInClient = Client<
    BasicErrorResponse,
    SignInResponse,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// [`token_client`] for a delegated sign-in.
pub(crate) fn sign_in_client(account: &AccountConfig) -> Result<SignInClient, FlowError> {
    let token_url = TokenUrl::new(endpoints(account).token_url)
        .map_err(|e| FlowError::Config(format!("token_url is not a URL: {e}")))?;
    Ok(Client::<
        BasicErrorResponse,
        SignInResponse,
        BasicTokenIntrospectionResponse,
        StandardRevocableToken,
        BasicRevocationErrorResponse,
    >::new(ClientId::new(account.client_id.clone()))
    .set_token_uri(token_url)
    .set_auth_type(AuthType::RequestBody))
}

/// The tokens of a finished delegated sign-in, once its id_token shows that
/// the account's own user signed in ([`identity::verify`]); otherwise an
/// error that names who signed in, and nothing to store.
pub(crate) fn signed_in_tokens(
    account: &AccountConfig,
    response: &SignInResponse,
) -> Result<StoredTokens, FlowError> {
    identity::verify(account, response.extra_fields().id_token.as_deref())?;
    Ok(stored_tokens(response))
}

fn describe_denial(description: &Option<String>) -> String {
    description
        .as_deref()
        .map(|d| format!(": {d}"))
        .unwrap_or_default()
}

/// What to show the user while the device flow waits.
pub struct DevicePrompt {
    pub message: String,
    pub verification_uri: String,
    pub user_code: String,
    pub expires_in: Duration,
}

/// The body parameters that authenticate the app at the token endpoint:
/// `client_secret`, or `client_assertion_type` and a fresh `client_assertion`
/// signed with `client_certificate`/`client_key` (audience: the account's
/// token URL); none for a public client. Add them to every token request of
/// the account (code exchange, refresh, client credentials) next to
/// `client_id` (`AuthType::RequestBody`, no `set_client_secret`).
pub fn client_auth_params(
    account: &AccountConfig,
) -> Result<Vec<(&'static str, SecretString)>, FlowError> {
    if let (Some(cert), Some(key)) = (&account.client_certificate, &account.client_key) {
        let credential = ClientCertificate::load(cert, key)
            .map_err(|e| FlowError::Config(format!("account {}: {e}", account.username)))?;
        let assertion = credential
            .assertion(
                &account.client_id,
                &endpoints(account).token_url,
                SystemTime::now(),
            )
            .map_err(|e| FlowError::Config(format!("account {}: {e}", account.username)))?;
        return Ok(vec![
            (
                "client_assertion_type",
                SecretString::from(CLIENT_ASSERTION_TYPE),
            ),
            ("client_assertion", assertion),
        ]);
    }
    Ok(match &account.client_secret {
        Some(secret) => vec![("client_secret", secret.clone())],
        None => Vec::new(),
    })
}

/// An oauth2 client for the account's token endpoint: `client_id` in the
/// body, no secret (that comes from [`client_auth_params`]).
pub(crate) fn token_client(
    account: &AccountConfig,
) -> Result<
    BasicClient<
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointNotSet,
        oauth2::EndpointSet,
    >,
    FlowError,
> {
    let token_url = TokenUrl::new(endpoints(account).token_url)
        .map_err(|e| FlowError::Config(format!("token_url is not a URL: {e}")))?;
    Ok(BasicClient::new(ClientId::new(account.client_id.clone()))
        .set_token_uri(token_url)
        .set_auth_type(AuthType::RequestBody))
}

/// Runs the device authorization grant (RFC 8628): asks for a code, hands
/// the prompt to `show`, then polls at the server's interval, slowing down
/// when told to, until the user has signed in, declined, or the code expired.
pub async fn device_code(
    account: &AccountConfig,
    http: &HttpClient,
    show: impl FnOnce(&DevicePrompt),
) -> Result<StoredTokens, FlowError> {
    let http = &http.for_account(account);
    let ep = endpoints(account);
    let device_url = ep.device_code_url.clone().ok_or_else(|| {
        FlowError::Config(format!(
            "account {} has no device_code_url",
            account.username
        ))
    })?;
    let client = sign_in_client(account)?.set_device_authorization_url(
        DeviceAuthorizationUrl::new(device_url).map_err(|e| FlowError::Config(e.to_string()))?,
    );
    let send = move |req| {
        let http = http.clone();
        async move { http.send(req).await }
    };
    let details: DeviceAuthorizationResponse<DeviceFields> = client
        .exchange_device_code()
        .add_scopes(ep.scopes.iter().cloned().map(Scope::new))
        .request_async(&send)
        .await
        .map_err(|e| FlowError::DeviceRequest(describe(e)))?;
    let prompt = DevicePrompt {
        message: details.extra_fields().message.clone().unwrap_or_else(|| {
            format!(
                "To sign in, open {} and enter the code {}",
                details.verification_uri().as_str(),
                details.user_code().secret()
            )
        }),
        verification_uri: details.verification_uri().to_string(),
        user_code: details.user_code().secret().to_owned(),
        expires_in: details.expires_in(),
    };
    show(&prompt);
    // The assertion is made now: it must be valid while the polls run, and
    // it lives ten minutes; the device code lives about fifteen.
    let auth = client_auth_params(account)?;
    let mut request = client.exchange_device_access_token(&details);
    for (name, value) in &auth {
        request = request.add_extra_param(*name, value.expose_secret().to_owned());
    }
    let response = request
        .request_async(&send, tokio::time::sleep, Some(details.expires_in()))
        .await
        .map_err(|e| FlowError::Token(describe(e)))?;
    signed_in_tokens(account, &response)
}

/// One client credentials request (app-only, RFC 6749 §4.4) with the
/// account's app-only scope (`https://outlook.office365.com/.default` for
/// office365) and its client authentication. Used by `authorize` as a check,
/// and by the token manager to get app-only access tokens; the error is the
/// oauth2 crate's, for `tokens::classify`. A credential that cannot be read
/// or signed comes back as `RequestTokenError::Other`.
pub async fn client_credentials(
    account: &AccountConfig,
    http: &HttpClient,
) -> Result<BasicTokenResponse, RequestTokenError<HttpError, BasicErrorResponse>> {
    let http = &http.for_account(account);
    let client = token_client(account).map_err(|e| RequestTokenError::Other(e.to_string()))?;
    let auth = client_auth_params(account).map_err(|e| RequestTokenError::Other(e.to_string()))?;
    let mut request = client
        .exchange_client_credentials()
        .add_scopes(endpoints(account).scopes.into_iter().map(Scope::new));
    for (name, value) in &auth {
        request = request.add_extra_param(*name, value.expose_secret().to_owned());
    }
    let send = move |req| {
        let http = http.clone();
        async move { http.send(req).await }
    };
    request.request_async(&send).await
}

/// What a token response gives to keep: the tokens and the access token's
/// wall-clock expiry.
pub(crate) fn stored_tokens<R: TokenResponse>(response: &R) -> StoredTokens {
    let lifetime = response.expires_in().unwrap_or(LIFETIME_WITHOUT_EXPIRY);
    let expires_at = SystemTime::now() + lifetime;
    StoredTokens {
        refresh_token: response
            .refresh_token()
            .map(|r| SecretString::from(r.secret().to_owned())),
        access_token: Some(SecretString::from(
            response.access_token().secret().to_owned(),
        )),
        expires_at: Some(
            expires_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
    }
}

/// A failed token request in words (the server's `error` and description;
/// never the request, so no secret).
pub fn describe<T: oauth2::ErrorResponse + std::fmt::Display>(
    e: RequestTokenError<HttpError, T>,
) -> String {
    match e {
        RequestTokenError::ServerResponse(r) => r.to_string(),
        RequestTokenError::Request(h) => h.to_string(),
        RequestTokenError::Parse(p, _) => format!("unexpected answer: {p}"),
        RequestTokenError::Other(o) => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(extra: &str) -> AccountConfig {
        toml::from_str(&format!(
            "username = \"app@contoso.com\"\nprovider = \"office365\"\ntenant = \"t\"\n\
             client_id = \"cid\"\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn client_auth_params_per_credential() {
        assert!(client_auth_params(&account("")).unwrap().is_empty());
        let p = client_auth_params(&account("client_secret = \"s3cr3t\"")).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].0, "client_secret");
        assert_eq!(p[0].1.expose_secret(), "s3cr3t");
        let dir = env!("CARGO_MANIFEST_DIR");
        let a = account(&format!(
            "client_certificate = \"{dir}/tests/fixtures/client_cert.pem\"\n\
             client_key = \"{dir}/tests/fixtures/client_key.pem\""
        ));
        let p = client_auth_params(&a).unwrap();
        assert_eq!(p[0].0, "client_assertion_type");
        assert_eq!(p[0].1.expose_secret(), CLIENT_ASSERTION_TYPE);
        assert_eq!(p[1].0, "client_assertion");
        assert_eq!(p[1].1.expose_secret().split('.').count(), 3);
        assert!(!format!("{p:?}").contains(p[1].1.expose_secret()));
        let a = account(&format!(
            "client_certificate = \"{dir}/tests/fixtures/client_cert.pem\"\n\
             client_key = \"/nonexistent/key.pem\""
        ));
        let err = client_auth_params(&a).unwrap_err().to_string();
        assert!(err.contains("client_key"), "{err}");
    }

    #[test]
    fn errors_carry_no_secrets_and_read_well() {
        let e = FlowError::Denied {
            error: "access_denied".into(),
            description: Some("AADSTS65004: User declined to consent.".into()),
        };
        assert_eq!(
            e.to_string(),
            "the provider refused the sign-in (access_denied): AADSTS65004: User declined to consent."
        );
        assert!(
            FlowError::TimedOut(Duration::from_secs(600))
                .to_string()
                .contains("10 minutes")
        );
    }
}
