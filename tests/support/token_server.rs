//! A fake Microsoft identity platform (v2.0) token endpoint over plain HTTP on 127.0.0.1.
//!
//! Routes (each also under `/{tenant}/oauth2/v2.0/…`, the real URL shape):
//! - `POST /token`: grants `refresh_token` (rotating refresh tokens), device code
//!   (`urn:ietf:params:oauth:grant-type:device_code`), `client_credentials`, `authorization_code`.
//! - `POST /devicecode`: starts a device code flow.
//! - `GET /authorize`: "the user consents at once": redirects to `redirect_uri` with a code
//!   (recording the PKCE challenge, state and hints), or with `error=access_denied` when told
//!   to ([`TokenState::set_authorize_error`]). The code is redeemed once, with the same
//!   `redirect_uri` and a `code_verifier` matching the challenge (S256 or plain).
//! - Client authentication on `/token`: a `client_secret` (checked when
//!   [`TokenState::set_expected_client_secret`] names one), or a JWT `client_assertion`
//!   (RS256, verified with a certificate registered by
//!   [`TokenState::register_client_certificate`]; header `x5t#S256`, `aud` = this URL,
//!   `iss` = `sub` = client_id, unexpired). Bad credentials get 401 `invalid_client`.
//! - `POST /introspect` (RFC 7662, `token=…`): `{"active":true,"username":…}` for an access
//!   token that is issued, unexpired and not revoked, `{"active":false}` otherwise. Dovecot's
//!   oauth2 passdb validates tokens this way in the interop suite.
//!
//! [`router`] gives the routes without a listener, for serving them over TLS
//! (`examples/fake_token_server.rs`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::conn::AbortOnDrop;

pub const GRANT_REFRESH: &str = "refresh_token";
pub const GRANT_DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";
pub const GRANT_AUTHORIZATION_CODE: &str = "authorization_code";
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

pub const DEFAULT_SCOPE: &str = "https://outlook.office.com/IMAP.AccessAsUser.All \
     https://outlook.office.com/POP.AccessAsUser.All https://outlook.office.com/SMTP.Send";

/// How `/token` (and, for the transport-level modes, `/devicecode`) answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// 400 `invalid_grant` (AADSTS70000) for every grant.
    InvalidGrant,
    /// This HTTP status with an HTML body (e.g. 500, 502, 503).
    Status(u16),
    /// 429 with `Retry-After` and a `temporarily_unavailable` JSON body.
    TooManyRequests {
        retry_after_secs: u64,
    },
    /// Never answers (sleeps for an hour).
    Hang,
    /// 200 with `Content-Type: application/json` and a truncated JSON body.
    MalformedJson,
    /// Success responses without `expires_in` (the token still lives `access_token_lifetime`).
    NoExpiresIn,
}

/// One request as the server saw it (nothing redacted: tests only).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub path: String,
    pub form: HashMap<String, String>,
}

pub struct TokenState {
    inner: Mutex<TokenInner>,
    in_flight: AtomicUsize,
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum RefreshTokenStatus {
    Valid,
    Used,
    Revoked,
}

struct DeviceCode {
    polls: usize,
    redeemed: bool,
    /// The scopes asked for (an id_token only with `openid`).
    scope: Option<String>,
}

struct AuthCode {
    /// The scopes asked for and the `login_hint` of the authorize request.
    scope: Option<String>,
    login_hint: Option<String>,
    redirect_uri: String,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    redeemed: bool,
}

/// One `GET /authorize` as the server saw it.
#[derive(Clone, Debug, Default)]
pub struct AuthorizeRequest {
    pub query: HashMap<String, String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub redirect_uri: Option<String>,
    pub state: Option<String>,
    pub login_hint: Option<String>,
    pub scope: Option<String>,
    pub prompt: Option<String>,
}

struct TokenInner {
    mode: Mode,
    delay: Duration,
    access_token_lifetime: u64,
    pending_polls: usize,
    single_use_refresh_tokens: bool,
    expected_client_id: Option<String>,
    next_access: u64,
    next_refresh: u64,
    next_code: u64,
    refresh_tokens: HashMap<String, RefreshTokenStatus>,
    latest_refresh_token: Option<String>,
    access_tokens: HashMap<String, Instant>,
    issued_access_tokens: Vec<String>,
    revoked_access_tokens: HashSet<String>,
    device_codes: HashMap<String, DeviceCode>,
    auth_codes: HashMap<String, AuthCode>,
    grant_counts: HashMap<String, usize>,
    total: usize,
    devicecode_requests: usize,
    authorize_requests: usize,
    log: Vec<RecordedRequest>,
    max_in_flight: usize,
    introspection_username: Option<String>,
    introspections: usize,
    authorize_log: Vec<AuthorizeRequest>,
    authorize_error: Option<(String, String)>,
    expected_client_secret: Option<String>,
    /// x5t#S256 thumbprint → RSAPublicKey (PKCS#1 DER) of registered certificates.
    client_certificates: HashMap<String, Vec<u8>>,
    codes_redeemed: usize,
    secret_grants: usize,
    assertion_grants: usize,
    client_auth_failures: Vec<String>,
    /// Who completes sign-ins at this fake provider: named by the id_token.
    /// `None`: the authorize request's `login_hint` (the account's own
    /// user), or [`super::USER`] for a device code.
    signed_in_user: Option<String>,
    /// Whether sign-ins asking for `openid` get an id_token (false: a
    /// provider without OpenID Connect).
    id_tokens: bool,
}

impl Default for TokenState {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenState {
    pub fn new() -> Self {
        TokenState {
            inner: Mutex::new(TokenInner {
                mode: Mode::Normal,
                delay: Duration::ZERO,
                access_token_lifetime: 3600,
                pending_polls: 1,
                single_use_refresh_tokens: true,
                expected_client_id: None,
                next_access: 1,
                next_refresh: 1,
                next_code: 1,
                refresh_tokens: HashMap::new(),
                latest_refresh_token: None,
                access_tokens: HashMap::new(),
                issued_access_tokens: Vec::new(),
                revoked_access_tokens: HashSet::new(),
                device_codes: HashMap::new(),
                auth_codes: HashMap::new(),
                grant_counts: HashMap::new(),
                total: 0,
                devicecode_requests: 0,
                authorize_requests: 0,
                log: Vec::new(),
                max_in_flight: 0,
                introspection_username: None,
                introspections: 0,
                authorize_log: Vec::new(),
                authorize_error: None,
                expected_client_secret: None,
                client_certificates: HashMap::new(),
                codes_redeemed: 0,
                secret_grants: 0,
                assertion_grants: 0,
                client_auth_failures: Vec::new(),
                signed_in_user: None,
                id_tokens: true,
            }),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TokenInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `refresh_token` a known, valid refresh token (as if a sign-in had issued it).
    /// Who completes the next sign-ins (the attack: another Microsoft
    /// user than the account's); `None` goes back to the account's own.
    pub fn set_signed_in_user(&self, user: Option<&str>) {
        self.lock().signed_in_user = user.map(str::to_owned);
    }

    /// Whether sign-ins that ask for `openid` get an id_token.
    pub fn set_id_tokens(&self, on: bool) {
        self.lock().id_tokens = on;
    }

    pub fn seed_refresh_token(&self, refresh_token: &str) {
        let mut inner = self.lock();
        inner
            .refresh_tokens
            .insert(refresh_token.to_owned(), RefreshTokenStatus::Valid);
        inner.latest_refresh_token = Some(refresh_token.to_owned());
    }

    /// Mints a valid access token directly (no HTTP, not counted as a request).
    pub fn issue_access_token(&self) -> String {
        self.lock().new_access_token()
    }

    pub fn set_mode(&self, mode: Mode) {
        self.lock().mode = mode;
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode.clone()
    }

    /// A pause before every request is answered (so concurrent callers overlap).
    pub fn set_delay(&self, delay: Duration) {
        self.lock().delay = delay;
    }

    /// `expires_in` (seconds) of access tokens issued from now on; default 3600. 0 issues
    /// tokens that are already expired.
    pub fn set_access_token_lifetime(&self, secs: u64) {
        self.lock().access_token_lifetime = secs;
    }

    /// Device code polls answered `authorization_pending` before tokens are issued; default 1.
    pub fn set_pending_polls(&self, polls: usize) {
        self.lock().pending_polls = polls;
    }

    /// Whether a refresh token stops working once used (default true: the caller must store
    /// the rotated one). With false, used refresh tokens stay valid until revoked.
    pub fn set_single_use_refresh_tokens(&self, single_use: bool) {
        self.lock().single_use_refresh_tokens = single_use;
    }

    /// Require this `client_id` (others get 400 `invalid_client`); by default any non-empty one.
    pub fn set_expected_client_id(&self, client_id: Option<&str>) {
        self.lock().expected_client_id = client_id.map(str::to_owned);
    }

    /// Issued, not expired, not revoked.
    pub fn is_valid_access_token(&self, token: &str) -> bool {
        self.lock().access_token_expiry(token).is_some()
    }

    /// The `username` that `/introspect` reports for valid access tokens (the mailbox the
    /// tokens belong to); none by default.
    pub fn set_introspection_username(&self, username: Option<&str>) {
        self.lock().introspection_username = username.map(str::to_owned);
    }

    /// `/introspect` requests, whatever the answer was.
    pub fn introspections(&self) -> usize {
        self.lock().introspections
    }

    pub fn is_valid_refresh_token(&self, token: &str) -> bool {
        self.lock().refresh_tokens.get(token) == Some(&RefreshTokenStatus::Valid)
    }

    /// The refresh token issued (or seeded) most recently.
    pub fn latest_refresh_token(&self) -> Option<String> {
        self.lock().latest_refresh_token.clone()
    }

    /// Every access token issued, in order.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.lock().issued_access_tokens.clone()
    }

    /// Makes every access token issued so far expired (refresh tokens stay valid).
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for expiry in self.lock().access_tokens.values_mut() {
            *expiry = now;
        }
    }

    /// Revokes every refresh and access token issued or seeded so far.
    pub fn revoke_all(&self) {
        let mut inner = self.lock();
        for status in inner.refresh_tokens.values_mut() {
            *status = RefreshTokenStatus::Revoked;
        }
        let all: Vec<String> = inner.access_tokens.keys().cloned().collect();
        inner.revoked_access_tokens.extend(all);
    }

    /// `/token` requests with this `grant_type` (e.g. [`GRANT_REFRESH`], [`GRANT_DEVICE_CODE`],
    /// [`GRANT_CLIENT_CREDENTIALS`]), whatever the answer was.
    pub fn requests(&self, grant_type: &str) -> usize {
        self.lock()
            .grant_counts
            .get(grant_type)
            .copied()
            .unwrap_or(0)
    }

    /// All `/token` requests.
    pub fn total_requests(&self) -> usize {
        self.lock().total
    }

    pub fn devicecode_requests(&self) -> usize {
        self.lock().devicecode_requests
    }

    pub fn authorize_requests(&self) -> usize {
        self.lock().authorize_requests
    }

    /// Every `GET /authorize`, in order.
    pub fn authorize_log(&self) -> Vec<AuthorizeRequest> {
        self.lock().authorize_log.clone()
    }

    /// With `Some((error, description))`, `/authorize` sends the browser back with that error
    /// (e.g. `access_denied`) instead of a code.
    pub fn set_authorize_error(&self, error: Option<(&str, &str)>) {
        self.lock().authorize_error = error.map(|(e, d)| (e.to_owned(), d.to_owned()));
    }

    /// Require this `client_secret` when one is sent (others get 401 `invalid_client`); by
    /// default any secret is accepted.
    pub fn set_expected_client_secret(&self, secret: Option<&str>) {
        self.lock().expected_client_secret = secret.map(str::to_owned);
    }

    /// Accepts client assertions signed with the key of this certificate (PEM), found by its
    /// `x5t#S256` thumbprint. Returns the thumbprint.
    pub fn register_client_certificate(&self, pem: &str) -> String {
        use rustls_pki_types::pem::{PemObject, SectionKind};
        let (kind, der) =
            <(SectionKind, Vec<u8>)>::from_pem_slice(pem.as_bytes()).expect("a PEM certificate");
        assert_eq!(kind, SectionKind::Certificate);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("an X.509 certificate");
        let key = cert.public_key().subject_public_key.data.to_vec();
        let thumbprint = B64URL.encode(Sha256::digest(&der));
        self.lock()
            .client_certificates
            .insert(thumbprint.clone(), key);
        thumbprint
    }

    /// Authorization codes exchanged for tokens.
    pub fn codes_redeemed(&self) -> usize {
        self.lock().codes_redeemed
    }

    /// Successful `client_credentials` grants authenticated with a client secret.
    pub fn secret_grants(&self) -> usize {
        self.lock().secret_grants
    }

    /// Successful `client_credentials` grants authenticated with a client assertion.
    pub fn assertion_grants(&self) -> usize {
        self.lock().assertion_grants
    }

    /// Why client authentications were refused, in order.
    pub fn client_auth_failures(&self) -> Vec<String> {
        self.lock().client_auth_failures.clone()
    }

    /// The form of the most recent `/token` or `/devicecode` request.
    pub fn last_form(&self) -> Option<HashMap<String, String>> {
        self.lock().log.last().map(|r| r.form.clone())
    }

    /// Every `/token` and `/devicecode` request, in order.
    pub fn recorded_requests(&self) -> Vec<RecordedRequest> {
        self.lock().log.clone()
    }

    /// Requests being handled right now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were being handled at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.lock().max_in_flight
    }

    fn enter(self: &Arc<Self>) -> InFlight {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        let mut inner = self.lock();
        inner.max_in_flight = inner.max_in_flight.max(now);
        InFlight(self.clone())
    }
}

struct InFlight(Arc<TokenState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TokenInner {
    /// When a valid (issued, unexpired, unrevoked) access token expires.
    fn access_token_expiry(&self, token: &str) -> Option<Instant> {
        if self.revoked_access_tokens.contains(token) {
            return None;
        }
        self.access_tokens
            .get(token)
            .copied()
            .filter(|&expiry| Instant::now() < expiry)
    }

    fn new_access_token(&mut self) -> String {
        let token = loop {
            let t = format!("at-{}-eyJ0eXAiOiJKV1Qi", self.next_access);
            self.next_access += 1;
            if !self.access_tokens.contains_key(&t) {
                break t;
            }
        };
        let expiry = Instant::now() + Duration::from_secs(self.access_token_lifetime);
        self.access_tokens.insert(token.clone(), expiry);
        self.issued_access_tokens.push(token.clone());
        token
    }

    fn new_refresh_token(&mut self) -> String {
        let token = loop {
            let t = format!("rt-{}-0.AVYAfakeRefresh", self.next_refresh);
            self.next_refresh += 1;
            if !self.refresh_tokens.contains_key(&t) {
                break t;
            }
        };
        self.refresh_tokens
            .insert(token.clone(), RefreshTokenStatus::Valid);
        self.latest_refresh_token = Some(token.clone());
        token
    }

    /// An id_token for a sign-in that asked for `scope`, naming `user`
    /// (`None`: the configured signed-in user, else `hint`, else [`super::USER`]).
    /// Unsigned (`alg: none`): the proxy reads the token endpoint's own answer.
    fn id_token(&self, scope: Option<&str>, hint: Option<&str>) -> Option<String> {
        let wants = scope.is_some_and(|s| s.split(' ').any(|s| s == "openid"));
        if !wants || !self.id_tokens {
            return None;
        }
        let user = self
            .signed_in_user
            .as_deref()
            .or(hint)
            .unwrap_or(super::USER);
        let claims = json!({
            "aud": "test-client",
            "iss": "https://login.example.test/v2.0",
            "preferred_username": user,
            "name": "Test User",
            "tid": "00000000-0000-0000-0000-000000000000",
        });
        Some(format!(
            "{}.{}.",
            B64URL.encode(br#"{"alg":"none","typ":"JWT"}"#),
            B64URL.encode(claims.to_string())
        ))
    }

    fn next_code(&mut self, prefix: &str) -> String {
        let code = format!("{prefix}-{}", self.next_code);
        self.next_code += 1;
        code
    }

    /// A Microsoft-shaped success body.
    fn tokens(&mut self, scope: Option<&String>, with_refresh: bool, no_expires_in: bool) -> Value {
        let lifetime = self.access_token_lifetime;
        let mut body = json!({
            "token_type": "Bearer",
            "scope": scope.map(String::as_str).unwrap_or(DEFAULT_SCOPE),
            "access_token": self.new_access_token(),
        });
        if !no_expires_in {
            body["expires_in"] = json!(lifetime);
            body["ext_expires_in"] = json!(lifetime);
        }
        if with_refresh {
            body["refresh_token"] = json!(self.new_refresh_token());
        }
        body
    }
}

pub struct FakeTokenServer {
    pub addr: SocketAddr,
    pub state: Arc<TokenState>,
    _task: AbortOnDrop,
}

impl FakeTokenServer {
    pub async fn start() -> Self {
        Self::start_with(Arc::new(TokenState::new())).await
    }

    pub async fn start_with(state: Arc<TokenState>) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("an address"), state).await
    }

    /// On a given address, e.g. one the proxy was configured with while nothing listened
    /// there (a token endpoint that comes back).
    pub async fn start_on(addr: SocketAddr, state: Arc<TokenState>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("FakeTokenServer: cannot bind {addr}: {e}"));
        let addr = listener
            .local_addr()
            .expect("local_addr of a bound listener");
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeTokenServer {
            addr,
            state,
            _task: AbortOnDrop(task),
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("{}/token", self.url())
    }

    pub fn devicecode_url(&self) -> String {
        format!("{}/devicecode", self.url())
    }

    pub fn authorize_url(&self) -> String {
        format!("{}/authorize", self.url())
    }
}

/// Every route of the fake, answering from `state`.
pub fn router(state: Arc<TokenState>) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/devicecode", post(devicecode))
        .route("/authorize", get(authorize))
        .route("/introspect", post(introspect))
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route("/{tenant}/oauth2/v2.0/devicecode", post(devicecode))
        .route("/{tenant}/oauth2/v2.0/authorize", get(authorize))
        .with_state(state)
}

/// A Microsoft-shaped error body.
fn ms_error(status: StatusCode, error: &str, code: u32, description: &str) -> Response {
    let body = json!({
        "error": error,
        "error_description": format!(
            "AADSTS{code}: {description} Trace ID: 00000000-0000-0000-0000-000000000000 \
             Correlation ID: 00000000-0000-0000-0000-000000000000 Timestamp: 2024-01-01 00:00:00Z"
        ),
        "error_codes": [code],
        "timestamp": "2024-01-01 00:00:00Z",
        "trace_id": "00000000-0000-0000-0000-000000000000",
        "correlation_id": "00000000-0000-0000-0000-000000000000",
        "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
    });
    (status, Json(body)).into_response()
}

fn plain_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({ "error": error }))).into_response()
}

/// Answers for the modes that fail at the transport level; `None` means "handle normally".
async fn transport_failure(mode: &Mode) -> Option<Response> {
    match mode {
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Some(StatusCode::GATEWAY_TIMEOUT.into_response())
        }
        Mode::Status(code) => {
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let html = format!(
                "<!DOCTYPE html><html><head><title>{status}</title></head>\
                 <body><h1>{status}</h1><p>The service is unavailable.</p></body></html>"
            );
            Some(
                (
                    status,
                    [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                    html,
                )
                    .into_response(),
            )
        }
        Mode::TooManyRequests { retry_after_secs } => {
            let mut resp = ms_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                50196,
                "The server terminated an operation because it encountered a client request loop.",
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_str(&retry_after_secs.to_string())
                    .expect("digits are a valid header"),
            );
            Some(resp)
        }
        Mode::MalformedJson => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                r#"{"token_type":"Bearer","access_token":"at-"#,
            )
                .into_response(),
        ),
        Mode::Normal | Mode::InvalidGrant | Mode::NoExpiresIn => None,
    }
}

async fn token(
    State(st): State<Arc<TokenState>>,
    uri: Uri,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let _in_flight = st.enter();
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    let (mode, delay) = {
        let mut inner = st.lock();
        inner.total += 1;
        *inner.grant_counts.entry(grant_type.clone()).or_default() += 1;
        inner.log.push(RecordedRequest {
            path: uri.path().to_owned(),
            form: form.clone(),
        });
        (inner.mode.clone(), inner.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(resp) = transport_failure(&mode).await {
        return resp;
    }
    let mut inner = st.lock();
    if let Some(resp) = check_client_id(&inner, &form) {
        return resp;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if let Err(why) = check_client_auth(&inner, &form, host, uri.path()) {
        inner.client_auth_failures.push(why.clone());
        return ms_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            7000215,
            &format!("Invalid client credential: {why}."),
        );
    }
    if mode == Mode::InvalidGrant {
        return ms_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            70000,
            "The provided value for the input parameter 'refresh_token' or 'assertion' is not valid.",
        );
    }
    let no_expires_in = mode == Mode::NoExpiresIn;
    let scope = form.get("scope");
    match grant_type.as_str() {
        GRANT_REFRESH => {
            let Some(presented) = form.get("refresh_token") else {
                return ms_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'refresh_token'.",
                );
            };
            if inner.refresh_tokens.get(presented) != Some(&RefreshTokenStatus::Valid) {
                return ms_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "The provided value for the input parameter 'refresh_token' or 'assertion' is not valid.",
                );
            }
            if inner.single_use_refresh_tokens {
                inner
                    .refresh_tokens
                    .insert(presented.clone(), RefreshTokenStatus::Used);
            }
            let body = inner.tokens(scope, true, no_expires_in);
            Json(body).into_response()
        }
        GRANT_DEVICE_CODE => {
            let Some(code) = form.get("device_code") else {
                return ms_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    900144,
                    "The request body must contain the following parameter: 'device_code'.",
                );
            };
            let pending_polls = inner.pending_polls;
            let Some(device) = inner.device_codes.get_mut(code) else {
                return plain_error(StatusCode::BAD_REQUEST, "bad_verification_code");
            };
            if device.redeemed {
                return ms_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed.",
                );
            }
            device.polls += 1;
            if device.polls <= pending_polls {
                return ms_error(
                    StatusCode::BAD_REQUEST,
                    "authorization_pending",
                    70016,
                    "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
                );
            }
            device.redeemed = true;
            let asked = device.scope.clone();
            let mut body = inner.tokens(scope, true, no_expires_in);
            if let Some(id) = inner.id_token(asked.as_deref(), None) {
                body["id_token"] = json!(id);
            }
            Json(body).into_response()
        }
        GRANT_CLIENT_CREDENTIALS => {
            if !form.contains_key("client_secret") && !form.contains_key("client_assertion") {
                return ms_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                );
            }
            if form.contains_key("client_assertion") {
                inner.assertion_grants += 1;
            } else {
                inner.secret_grants += 1;
            }
            let body = inner.tokens(scope, false, no_expires_in);
            Json(body).into_response()
        }
        GRANT_AUTHORIZATION_CODE => {
            let code = form.get("code").cloned().unwrap_or_default();
            let redirect_uri = form.get("redirect_uri").cloned().unwrap_or_default();
            let verifier = form.get("code_verifier").cloned();
            let Some(auth) = inner.auth_codes.get_mut(&code) else {
                return ms_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    70000,
                    "The provided authorization code is not valid.",
                );
            };
            if auth.redeemed {
                return ms_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    54005,
                    "OAuth2 Authorization code was already redeemed.",
                );
            }
            if auth.redirect_uri != redirect_uri {
                return ms_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    50148,
                    "The redirect_uri does not match the one used in the authorization request.",
                );
            }
            if let Some(challenge) = &auth.code_challenge {
                let Some(verifier) = verifier else {
                    return ms_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        50148,
                        "The code_verifier is missing.",
                    );
                };
                let expected = match auth.code_challenge_method.as_deref() {
                    Some("S256") => B64URL.encode(Sha256::digest(verifier.as_bytes())),
                    _ => verifier,
                };
                if &expected != challenge {
                    return ms_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_grant",
                        501481,
                        "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                    );
                }
            }
            auth.redeemed = true;
            let (asked, hint) = (auth.scope.clone(), auth.login_hint.clone());
            inner.codes_redeemed += 1;
            let mut body = inner.tokens(scope, true, no_expires_in);
            if let Some(id) = inner.id_token(asked.as_deref(), hint.as_deref()) {
                body["id_token"] = json!(id);
            }
            Json(body).into_response()
        }
        other => ms_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            70003,
            &format!("The app requested an unsupported grant type '{other}'."),
        ),
    }
}

/// A `client_secret` (when one is expected) or a `client_assertion` (always verified).
/// `host` and `path` are where the request came: the assertion's `aud` must name them.
fn check_client_auth(
    inner: &TokenInner,
    form: &HashMap<String, String>,
    host: &str,
    path: &str,
) -> Result<(), String> {
    if let Some(secret) = form.get("client_secret")
        && let Some(want) = &inner.expected_client_secret
        && secret != want
    {
        return Err("wrong client_secret".into());
    }
    let Some(assertion) = form.get("client_assertion") else {
        return Ok(());
    };
    if form.contains_key("client_secret") {
        return Err("both client_secret and client_assertion".into());
    }
    if form.get("client_assertion_type").map(String::as_str) != Some(CLIENT_ASSERTION_TYPE) {
        return Err("client_assertion_type is not jwt-bearer".into());
    }
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("the assertion is not a JWS".into());
    };
    let json = |part: &str| -> Result<Value, String> {
        let bytes = B64URL
            .decode(part)
            .map_err(|_| "bad base64url".to_owned())?;
        serde_json::from_slice(&bytes).map_err(|_| "bad JSON".to_owned())
    };
    let header_json = json(header)?;
    if header_json["alg"] != "RS256" {
        return Err("alg is not RS256".into());
    }
    let thumbprint = header_json["x5t#S256"].as_str().unwrap_or_default();
    let Some(key) = inner.client_certificates.get(thumbprint) else {
        return Err("x5t#S256 names no registered certificate".into());
    };
    let signature = B64URL
        .decode(signature)
        .map_err(|_| "bad signature encoding".to_owned())?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::RSA_PKCS1_2048_8192_SHA256, key)
        .verify(format!("{header}.{claims}").as_bytes(), &signature)
        .map_err(|_| "the signature does not verify".to_owned())?;
    let claims = json(claims)?;
    let aud = claims["aud"].as_str().unwrap_or_default();
    let aud_ok = reqwest::Url::parse(aud).is_ok_and(|u| {
        let authority = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_owned(),
        };
        authority == host && u.path() == path
    });
    if !aud_ok {
        return Err(format!("aud `{aud}` is not this token endpoint"));
    }
    let client_id = form
        .get("client_id")
        .map(String::as_str)
        .unwrap_or_default();
    if claims["iss"] != client_id || claims["sub"] != client_id {
        return Err("iss and sub must be the client_id".into());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = claims["exp"].as_u64().unwrap_or(0);
    if exp <= now {
        return Err("the assertion has expired".into());
    }
    if claims["nbf"].as_u64().is_some_and(|nbf| nbf > now + 60) {
        return Err("the assertion is not valid yet".into());
    }
    if claims["jti"].as_str().is_none_or(str::is_empty) {
        return Err("jti is missing".into());
    }
    Ok(())
}

fn check_client_id(inner: &TokenInner, form: &HashMap<String, String>) -> Option<Response> {
    match form.get("client_id").filter(|id| !id.is_empty()) {
        None => Some(ms_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            900144,
            "The request body must contain the following parameter: 'client_id'.",
        )),
        Some(id)
            if inner
                .expected_client_id
                .as_ref()
                .is_some_and(|want| want != id) =>
        {
            Some(ms_error(
                StatusCode::BAD_REQUEST,
                "unauthorized_client",
                700016,
                &format!("Application with identifier '{id}' was not found in the directory."),
            ))
        }
        Some(_) => None,
    }
}

async fn devicecode(
    State(st): State<Arc<TokenState>>,
    uri: Uri,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let _in_flight = st.enter();
    let (mode, delay) = {
        let mut inner = st.lock();
        inner.devicecode_requests += 1;
        inner.log.push(RecordedRequest {
            path: uri.path().to_owned(),
            form: form.clone(),
        });
        (inner.mode.clone(), inner.delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(resp) = transport_failure(&mode).await {
        return resp;
    }
    let mut inner = st.lock();
    if let Some(resp) = check_client_id(&inner, &form) {
        return resp;
    }
    let device_code = inner.next_code("dc");
    let user_code = format!("FAKE{:04}", inner.next_code - 1);
    inner.device_codes.insert(
        device_code.clone(),
        DeviceCode {
            polls: 0,
            redeemed: false,
            scope: form.get("scope").cloned(),
        },
    );
    let verification_uri = "https://microsoft.com/devicelogin";
    Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "expires_in": 900,
        "interval": 1,
        "message": format!(
            "To sign in, use a web browser to open the page {verification_uri} and enter the code \
             {user_code} to authenticate."
        ),
    }))
    .into_response()
}

async fn authorize(
    State(st): State<Arc<TokenState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut inner = st.lock();
    inner.authorize_requests += 1;
    let Some(redirect_uri) = query.get("redirect_uri").cloned() else {
        return (StatusCode::BAD_REQUEST, "redirect_uri missing").into_response();
    };
    if query.get("client_id").is_none_or(|id| id.is_empty()) {
        return (StatusCode::BAD_REQUEST, "client_id missing").into_response();
    }
    inner.authorize_log.push(AuthorizeRequest {
        query: query.clone(),
        code_challenge: query.get("code_challenge").cloned(),
        code_challenge_method: query.get("code_challenge_method").cloned(),
        redirect_uri: Some(redirect_uri.clone()),
        state: query.get("state").cloned(),
        login_hint: query.get("login_hint").cloned(),
        scope: query.get("scope").cloned(),
        prompt: query.get("prompt").cloned(),
    });
    let sep = if redirect_uri.contains('?') { '&' } else { '?' };
    let mut location = if let Some((error, description)) = &inner.authorize_error {
        format!(
            "{redirect_uri}{sep}error={}&error_description={}",
            percent_encode(error),
            percent_encode(description)
        )
    } else {
        let code = inner.next_code("ac");
        inner.auth_codes.insert(
            code.clone(),
            AuthCode {
                scope: query.get("scope").cloned(),
                login_hint: query.get("login_hint").cloned(),
                redirect_uri: redirect_uri.clone(),
                code_challenge: query.get("code_challenge").cloned(),
                code_challenge_method: query.get("code_challenge_method").cloned(),
                redeemed: false,
            },
        );
        format!("{redirect_uri}{sep}code={}", percent_encode(&code))
    };
    if let Some(state) = query.get("state") {
        location.push_str("&state=");
        location.push_str(&percent_encode(state));
    }
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

/// RFC 7662 token introspection. The body is read as a form whatever its
/// `Content-Type`, as introspecting clients differ in what they send.
async fn introspect(State(st): State<Arc<TokenState>>, body: String) -> Response {
    let mut inner = st.lock();
    inner.introspections += 1;
    let expiry = form_value(&body, "token").and_then(|t| inner.access_token_expiry(&t));
    let Some(expiry) = expiry else {
        return Json(json!({ "active": false })).into_response();
    };
    let mut answer = json!({
        "active": true,
        "token_type": "Bearer",
        "scope": DEFAULT_SCOPE,
        "expires_in": expiry.saturating_duration_since(Instant::now()).as_secs(),
    });
    if let Some(username) = &inner.introspection_username {
        answer["username"] = json!(username);
    }
    Json(answer).into_response()
}

/// The first value of `key` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &str, key: &str) -> Option<String> {
    body.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (percent_decode(k) == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
