//! The page's routes: `GET /`, `POST /signin` (to the provider),
//! `GET /callback` (back from it), `POST /device` (a device code sign-in in
//! the background). Every request passes the `Host` guard; every POST the
//! `Origin` guard and the CSRF token; every answer gets the security headers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Form, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::guard::{self, Refusal};
use super::page::{self, AccountRow, DeviceState, Page};
use super::{AppState, MAX_BODY_BYTES, View};
use crate::auth::flows::{self, FlowError, PendingSignIn, callback_error, finish_sign_in};
use crate::auth::provider::endpoints;
use crate::auth::signin::{LocalPassword, PasswordError, save_signed_in};
use crate::auth::vault::StoredTokens;
use crate::config::{AccountConfig, Flow};
use secrecy::SecretString;

pub(super) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(show))
        .route("/signin", post(sign_in))
        .route(crate::auth::loopback::CALLBACK_PATH, get(callback))
        .route("/device", post(device))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn_with_state(state.clone(), guarded))
        .with_state(state)
}

/// The `Host` of every request, the origin of every POST; then the
/// security headers on whatever is answered.
async fn guarded(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let text = |h: header::HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).or_else(|| request.uri().authority().map(|a| a.as_str()));
    let mut checked = guard::check_host(&state.hosts, host);
    if checked.is_ok() && request.method() != Method::GET && request.method() != Method::HEAD {
        checked = guard::check_origin(&state.hosts, text(header::ORIGIN), text(header::REFERER));
    }
    let mut response = match checked {
        Ok(()) => next.run(request).await,
        Err(refusal) => refuse(refusal),
    };
    let targets = form_targets(&state.current().accounts);
    let h = response.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&guard::content_security_policy(&targets)) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Not `no-referrer`: with it a browser sends `Origin: null` on the
    // page's own form posts. `same-origin` still tells other sites nothing.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    response
}

fn refuse(refusal: Refusal) -> Response {
    refusal_reply(refusal).into_response()
}

fn refusal_reply(refusal: Refusal) -> (StatusCode, &'static str) {
    let status = match refusal {
        Refusal::ForeignHost => StatusCode::MISDIRECTED_REQUEST,
        Refusal::ForeignOrigin | Refusal::BadCsrf => StatusCode::FORBIDDEN,
    };
    (status, refusal.message())
}

/// The origins a sign-in form may end up at (its 303 to the provider).
fn form_targets(accounts: &[AccountConfig]) -> Vec<String> {
    let mut origins: Vec<String> = accounts
        .iter()
        .filter_map(|a| endpoints(a).authorize_url)
        .filter_map(|u| guard::url_origin(&u))
        .collect();
    origins.sort();
    origins.dedup();
    origins
}

fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "bad redirect").into_response(),
    }
}

fn back_to_page() -> Response {
    see_other("/")
}

/// The configuration of `username`: a configured account (a catch-all by
/// its `@domain`), or an address under a catch-all.
fn config_for(view: &View, username: &str) -> Option<AccountConfig> {
    if username.starts_with('@') {
        return view
            .accounts
            .iter()
            .find(|a| a.username.eq_ignore_ascii_case(username))
            .cloned();
    }
    view.context.gate.tokens().account_config(username)
}

async fn show(State(state): State<Arc<AppState>>) -> Response {
    let view = state.current();
    let rows = view
        .context
        .gate
        .tokens()
        .status()
        .await
        .into_iter()
        .map(|status| {
            let ep = config_for(&view, &status.username).map(|c| endpoints(&c));
            let interactive = status.flow != Flow::ClientCredentials;
            AccountRow {
                browser_sign_in: interactive
                    && ep.as_ref().is_some_and(|e| e.authorize_url.is_some()),
                device_sign_in: interactive
                    && ep.as_ref().is_some_and(|e| e.device_code_url.is_some()),
                choose_password: config_for(&view, &status.username)
                    .is_some_and(|c| c.password_hash.is_none()),
                status,
            }
        })
        .collect();
    let page = Page {
        address: state.page_url.clone(),
        csrf: state.csrf.value().to_owned(),
        accounts: rows,
        device: state.device.snapshot(),
        listeners: view
            .listeners
            .iter()
            .map(|l| l.row(&view.context))
            .collect(),
        open_sessions: view.sessions.open(),
        notices: state.notices.lock().iter().cloned().collect(),
        events: view.context.notices.recent(),
    };
    // A shared token store that does not answer: said first.
    let mut page = page;
    if let Some(problem) = view.context.gate.tokens().store_problem() {
        page.notices.insert(
            0,
            page::Notice {
                account: "token store".into(),
                ok: false,
                text: problem,
            },
        );
    }
    Html(page::render(&page)).into_response()
}

#[derive(Deserialize)]
struct AccountForm {
    account: Option<String>,
    csrf: Option<String>,
    /// The local password chosen with the sign-in, and its confirmation.
    password: Option<SecretString>,
    password2: Option<SecretString>,
}

/// The form's local password for `config`: required (typed twice alike,
/// long enough) for an account whose tokens are sealed with it; none for a
/// `password_hash` account (its password is in the configuration).
fn chosen_password(
    form: &AccountForm,
    config: &AccountConfig,
) -> Result<Option<LocalPassword>, PasswordError> {
    if config.password_hash.is_some() {
        return Ok(None);
    }
    let empty = SecretString::from(String::new());
    let password = form.password.as_ref().unwrap_or(&empty);
    let again = form.password2.as_ref().unwrap_or(&empty);
    LocalPassword::new(password, Some(again)).map(Some)
}

/// The form's account, once its CSRF token is right.
fn account_of(state: &AppState, form: &AccountForm) -> Result<String, (StatusCode, &'static str)> {
    state
        .csrf
        .check(form.csrf.as_deref())
        .map_err(refusal_reply)?;
    let account = form.account.as_deref().unwrap_or("").trim();
    if account.is_empty() || account.len() > 320 || account.chars().any(char::is_control) {
        return Err((StatusCode::BAD_REQUEST, "Which account? Enter an address."));
    }
    Ok(account.to_owned())
}

/// A sign-in's account: configured, interactive, and not a catch-all itself.
fn interactive_config(state: &AppState, view: &View, account: &str) -> Option<AccountConfig> {
    let config = config_for(view, account);
    match config {
        Some(c) if c.flow != Flow::ClientCredentials && !c.is_catch_all() => Some(c),
        Some(_) => {
            state.notify(
                account,
                false,
                "this account needs no sign-in (app-only), or is a whole domain: \
                 enter one address of it",
            );
            None
        }
        None => {
            state.notify(account, false, "no such account is configured in the proxy");
            None
        }
    }
}

async fn sign_in(State(state): State<Arc<AppState>>, Form(form): Form<AccountForm>) -> Response {
    let account = match account_of(&state, &form) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let view = state.current();
    let Some(config) = interactive_config(&state, &view, &account) else {
        return back_to_page();
    };
    let password = match chosen_password(&form, &config) {
        Ok(p) => p,
        Err(e) => {
            state.notify(&config.username, false, e.to_string());
            return back_to_page();
        }
    };
    match PendingSignIn::start(&config, &state.redirect_uri()) {
        Ok((url, pending)) => {
            let key = pending.state().to_owned();
            state
                .pending
                .lock()
                .insert(key, (pending, password), Instant::now());
            tracing::info!(account = %config.username, "sign-in started from the local page");
            see_other(&url)
        }
        Err(e) => {
            state.notify(&config.username, false, e.to_string());
            back_to_page()
        }
    }
}

async fn callback(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let pending = params
        .get("state")
        .and_then(|s| state.pending.lock().take(s, Instant::now()));
    let Some((pending, password)) = pending else {
        return (
            StatusCode::BAD_REQUEST,
            Html(
                "<!doctype html><meta charset=\"utf-8\"><title>xoauth2-proxy</title>\
                 <p>This sign-in answer is unknown or expired (or was used already). \
                 <a href=\"/\">Back to the page</a> to start again.</p>",
            ),
        )
            .into_response();
    };
    let username = pending.username().to_owned();
    if let Some(e) = callback_error(&params) {
        tracing::warn!(account = %username, error = %e, "sign-in refused by the provider");
        state.notify(&username, false, e.to_string());
        return back_to_page();
    }
    let view = state.current();
    let Some(config) = interactive_config(&state, &view, &username) else {
        return back_to_page();
    };
    let code = params.get("code").map(String::as_str).unwrap_or("");
    let sent_state = params.get("state").map(String::as_str).unwrap_or("");
    let http = view.context.gate.tokens().http().clone();
    match finish_sign_in(pending, &config, &http, sent_state, code).await {
        Ok(tokens) => {
            store(&state, &config, tokens, password).await;
        }
        Err(e) => {
            tracing::warn!(account = %username, error = %e, "sign-in from the local page failed");
            state.notify(&username, false, e.to_string());
        }
    }
    back_to_page()
}

/// Saves the tokens of a sign-in whose user was checked, sealed under the
/// password chosen in its form, with the configuration in use now, and
/// tells the token manager. `false`: they could not be saved (said on the page).
async fn store(
    state: &AppState,
    config: &AccountConfig,
    tokens: StoredTokens,
    password: Option<LocalPassword>,
) -> bool {
    let view = state.current();
    let username = config.username.as_str();
    let store = view.context.gate.tokens().store().clone();
    let kdf = view.context.gate.tokens().kdf();
    let account = config.clone();
    let saved = tokio::task::spawn_blocking(move || {
        save_signed_in(&store, &account, &tokens, password.as_ref(), kdf)
    })
    .await;
    match saved {
        Ok(Ok(())) => {
            view.context.gate.tokens().signed_in(username).await;
            tracing::info!(account = %username, "signed in from the local page");
            let message = if config.password_hash.is_some() {
                "signed in. Mail clients log in with this address and the password of its \
                 password_hash."
            } else {
                "signed in. Now log in from your mail client with this address and the \
                 password you chose here."
            };
            state.notify(username, true, message);
            true
        }
        Ok(Err(e)) => {
            tracing::error!(account = %username, error = %e, "cannot save the new tokens");
            state.notify(username, false, e.to_string());
            false
        }
        Err(e) => {
            state.notify(username, false, format!("cannot save the tokens: {e}"));
            false
        }
    }
}

async fn device(State(state): State<Arc<AppState>>, Form(form): Form<AccountForm>) -> Response {
    let account = match account_of(&state, &form) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let view = state.current();
    let Some(config) = interactive_config(&state, &view, &account) else {
        return back_to_page();
    };
    let password = match chosen_password(&form, &config) {
        Ok(p) => p,
        Err(e) => {
            state.notify(&config.username, false, e.to_string());
            return back_to_page();
        }
    };
    if !state.device.begin(&config.username) {
        return back_to_page();
    }
    let http = view.context.gate.tokens().http().clone();
    let task_state = state.clone();
    let mut tasks = state.tasks.lock();
    while tasks.try_join_next().is_some() {}
    tasks.spawn(async move {
        let state = task_state;
        let username = config.username.clone();
        tracing::info!(account = %username, "device code sign-in started from the local page");
        let result = flows::device_code(&config, &http, |prompt| {
            state.device.set(
                &username,
                DeviceState::Waiting {
                    message: prompt.message.clone(),
                    verification_uri: prompt.verification_uri.clone(),
                    user_code: prompt.user_code.clone(),
                },
            );
        })
        .await;
        match result {
            Ok(tokens) => {
                let done = if store(&state, &config, tokens, password).await {
                    DeviceState::Done
                } else {
                    DeviceState::Failed("signed in, but the tokens could not be saved".into())
                };
                state.device.set(&username, done);
            }
            Err(e) => {
                tracing::warn!(account = %username, error = %e, "device code sign-in failed");
                let reason = match &e {
                    FlowError::Config(m) => m.clone(),
                    other => other.to_string(),
                };
                state.device.set(&username, DeviceState::Failed(reason));
            }
        }
    });
    back_to_page()
}
