//! A fake Microsoft Graph `sendMail` endpoint over plain HTTP on 127.0.0.1:
//! checks the bearer token against the fake token server, answers with
//! the statuses a test scripts (202 when none is left), and records every
//! request it received (mailbox, token, content type, decoded MIME).
//!
//! For large messages also the draft's endpoints: create from MIME,
//! attachments, `createUploadSession`, the upload URL (served here too,
//! pre-authenticated by a token in its query that it checks), `send` and
//! `DELETE`; each of those requests is recorded whole as a [`GraphCall`].
//!
//! With a `save_dir` (the interop suite's stand-alone fake) it also writes
//! what Graph would deliver: each `sendMail`'s MIME, and for a draft sent
//! its MIME and the attachments added to it, reassembled from the calls.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::RawQuery;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::Method;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use base64::Engine as _;

use super::{AbortOnDrop, TokenState};

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct GraphRequest {
    pub mailbox: String,
    pub bearer: String,
    pub content_type: String,
    /// The base64 body decoded: the MIME message.
    pub mime: Vec<u8>,
    /// Whether the bearer was a token the fake token server issued.
    pub token_valid: bool,
}

/// A scripted answer: status, Graph error code, Retry-After.
#[derive(Debug, Clone)]
pub struct GraphAnswer {
    pub status: u16,
    pub code: &'static str,
    pub retry_after: Option<u64>,
}

/// The query secret of the fake's upload URLs (a fake's, shown nowhere).
pub const UPLOAD_SECRET: &str = "fake-upload-secret";

/// One request to a draft endpoint or the upload URL, as received.
#[derive(Debug, Clone)]
pub struct GraphCall {
    pub method: String,
    /// Without the query.
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    pub token_valid: bool,
    pub content_type: String,
    pub content_range: String,
    pub content_length: String,
    pub body: Vec<u8>,
}

impl GraphCall {
    /// The draft's MIME (the base64 body of `POST …/messages`), decoded.
    pub fn mime(&self) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.body)
            .unwrap_or_else(|_| b"<not base64>".to_vec())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }

    /// `POST`, `PUT`… and the path's last segment (`messages`, `send`…).
    pub fn kind(&self) -> String {
        let last = self.path.rsplit('/').next().unwrap_or_default();
        if self.path.starts_with("/upload/") {
            return format!("{} upload", self.method);
        }
        format!("{} {last}", self.method)
    }
}

#[derive(Default)]
pub struct GraphState {
    pub requests: Mutex<Vec<GraphRequest>>,
    /// Every request to the draft endpoints and upload URLs, in order.
    pub calls: Mutex<Vec<GraphCall>>,
    /// Answer this status to the next draft creation instead of 201.
    pub draft_status: Mutex<Option<u16>>,
    /// Answer 500 to this upload range (0 = the first `PUT` the fake
    /// received, counting every upload session).
    pub fail_upload_put: Mutex<Option<usize>>,
    pub script: Mutex<VecDeque<GraphAnswer>>,
    /// Where each accepted message is also written (`N.eml`), for the
    /// interop suite's stand-alone fake (`examples/fake_token_server.rs`):
    /// a `sendMail`'s MIME, or for a draft that was sent its MIME and
    /// each attachment added to it (`N.att-K`, `N.att-K.json`).
    pub save_dir: Mutex<Option<std::path::PathBuf>>,
    /// How many messages were written to `save_dir` (the last `N`).
    pub saved: Mutex<usize>,
    /// The scheme of the upload URLs `createUploadSession` answers
    /// (`None`: `http`, as this server; the stand-alone fake serves HTTPS).
    pub upload_scheme: Mutex<Option<&'static str>>,
}

impl GraphState {
    pub fn answer_next(&self, status: u16, code: &'static str, retry_after: Option<u64>) {
        self.script.lock().unwrap().push_back(GraphAnswer {
            status,
            code,
            retry_after,
        });
    }

    pub fn requests(&self) -> Vec<GraphRequest> {
        self.requests.lock().unwrap().clone()
    }

    pub fn calls(&self) -> Vec<GraphCall> {
        self.calls.lock().unwrap().clone()
    }
}

pub struct FakeGraphServer {
    pub addr: SocketAddr,
    pub state: Arc<GraphState>,
    _task: AbortOnDrop,
}

impl FakeGraphServer {
    pub async fn start(tokens: Arc<TokenState>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake Graph");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(GraphState::default());
        let app = router(state.clone(), tokens);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeGraphServer {
            addr,
            state,
            _task: AbortOnDrop(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The `sendMail` route, checking bearer tokens against `tokens`.
pub fn router(state: Arc<GraphState>, tokens: Arc<TokenState>) -> Router {
    Router::new()
        .route("/v1.0/users/{mailbox}/sendMail", post(send_mail))
        .route("/v1.0/users/{mailbox}/messages", post(draft_call))
        .route(
            "/v1.0/users/{mailbox}/messages/{*rest}",
            post(draft_call).delete(draft_call),
        )
        .route("/upload/{*rest}", put(draft_call))
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state((state, tokens))
}

/// A request header's text, or "" when absent or not text.
fn header_text(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

async fn send_mail(
    State((state, tokens)): State<(Arc<GraphState>, Arc<TokenState>)>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let get = |name| header_text(&headers, name);
    let bearer = get(header::AUTHORIZATION)
        .strip_prefix("Bearer ")
        .unwrap_or_default()
        .to_owned();
    let token_valid = tokens.is_valid_access_token(&bearer);
    let mime = base64::engine::general_purpose::STANDARD
        .decode(&body)
        .unwrap_or_else(|_| b"<not base64>".to_vec());
    state.requests.lock().unwrap().push(GraphRequest {
        mailbox,
        bearer,
        content_type: get(header::CONTENT_TYPE),
        mime,
        token_valid,
    });
    let scripted = state.script.lock().unwrap().pop_front();
    let answer = match scripted {
        Some(a) => a,
        None if !token_valid => GraphAnswer {
            status: 401,
            code: "InvalidAuthenticationToken",
            retry_after: None,
        },
        None => GraphAnswer {
            status: 202,
            code: "",
            retry_after: None,
        },
    };
    let status = StatusCode::from_u16(answer.status).expect("a status");
    if answer.status == 202 {
        let dir = state.save_dir.lock().unwrap().clone();
        if let Some(dir) = dir {
            let mime = state
                .requests
                .lock()
                .unwrap()
                .last()
                .expect("this request")
                .mime
                .clone();
            if let Err(e) = save(&state, &dir, &mime, &[]) {
                eprintln!(
                    "fake Graph: cannot save a message in {}: {e}",
                    dir.display()
                );
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
        }
        return status.into_response();
    }
    let body = format!(
        r#"{{"error":{{"code":"{}","message":"scripted by the test"}}}}"#,
        answer.code
    );
    let mut response = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(secs) = answer.retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
    }
    response
}

/// The draft endpoints and the upload URL: recorded, then answered as
/// Graph does (ids and upload URLs made up here).
async fn draft_call(
    State((state, tokens)): State<(Arc<GraphState>, Arc<TokenState>)>,
    method: Method,
    uri: axum::http::Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let get = |name| header_text(&headers, name);
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let token_valid = authorization
        .as_deref()
        .and_then(|a| a.strip_prefix("Bearer "))
        .is_some_and(|t| tokens.is_valid_access_token(t));
    let path = uri.path().to_owned();
    let call = GraphCall {
        method: method.to_string(),
        path: path.clone(),
        query: query.clone().unwrap_or_default(),
        authorization,
        token_valid,
        content_type: get(header::CONTENT_TYPE),
        content_range: get(header::CONTENT_RANGE),
        content_length: get(header::CONTENT_LENGTH),
        body: body.to_vec(),
    };
    let kind = call.kind();
    let content_range = call.content_range.clone();
    let puts_before = {
        let mut calls = state.calls.lock().unwrap();
        let puts = calls.iter().filter(|c| c.method == "PUT").count();
        calls.push(call);
        puts
    };
    let json = |status: StatusCode, value: serde_json::Value| {
        (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            value.to_string(),
        )
            .into_response()
    };
    if kind == "PUT upload" {
        // Pre-authenticated: the query's token, never a bearer.
        if query.as_deref() != Some(&format!("authtoken={UPLOAD_SECRET}")) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
        if *state.fail_upload_put.lock().unwrap() == Some(puts_before) {
            return json(
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({"error": {"code": "ErrorInternalServerError"}}),
            );
        }
        // "bytes a-b/N": 201 once b is the last octet, else where to go on.
        let range = content_range.strip_prefix("bytes ").unwrap_or_default();
        let (span, total) = range.split_once('/').unwrap_or_default();
        let end: u64 = span
            .split_once('-')
            .and_then(|(_, b)| b.parse().ok())
            .unwrap_or(0);
        let total: u64 = total.parse().unwrap_or(0);
        if end + 1 == total {
            return StatusCode::CREATED.into_response();
        }
        return json(
            StatusCode::OK,
            serde_json::json!({"nextExpectedRanges": [format!("{}", end + 1)]}),
        );
    }
    if !token_valid {
        return json(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": {"code": "InvalidAuthenticationToken"}}),
        );
    }
    match kind.as_str() {
        "POST messages" => {
            if let Some(status) = state.draft_status.lock().unwrap().take() {
                return json(
                    StatusCode::from_u16(status).unwrap(),
                    serde_json::json!({"error": {"code": "ErrorAccessDenied"}}),
                );
            }
            let n = state.calls.lock().unwrap().len();
            json(
                StatusCode::CREATED,
                serde_json::json!({"id": format!("AAMkDraft-{n}=")}),
            )
        }
        "POST attachments" => json(StatusCode::CREATED, serde_json::json!({"id": "att"})),
        "POST createUploadSession" => {
            let host = get(header::HOST);
            let n = state.calls.lock().unwrap().len();
            let scheme = state.upload_scheme.lock().unwrap().unwrap_or("http");
            json(
                StatusCode::CREATED,
                serde_json::json!({
                    "uploadUrl": format!("{scheme}://{host}/upload/session-{n}?authtoken={UPLOAD_SECRET}"),
                    "nextExpectedRanges": ["0"],
                }),
            )
        }
        "POST send" => {
            let dir = state.save_dir.lock().unwrap().clone();
            if let Some(dir) = dir {
                let id = path
                    .strip_suffix("/send")
                    .and_then(|p| p.rsplit('/').next())
                    .unwrap_or_default();
                let saved = sent_draft(&state.calls(), id)
                    .ok_or_else(|| std::io::Error::other(format!("no draft {id}")))
                    .and_then(|(mime, attachments)| save(&state, &dir, &mime, &attachments));
                if let Err(e) = saved {
                    eprintln!("fake Graph: cannot save a draft in {}: {e}", dir.display());
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
            }
            StatusCode::ACCEPTED.into_response()
        }
        _ if method == Method::DELETE => StatusCode::NO_CONTENT.into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// An attachment as Graph would deliver it: its bytes and its properties
/// (`name`, `contentType`, `isInline`, `contentId`).
struct SavedAttachment {
    bytes: Vec<u8>,
    properties: serde_json::Value,
}

/// The MIME of the draft `id` and its attachments in the order they were
/// added, from the calls received: the `POST …/messages` that answered
/// this id, then each `fileAttachment` posted to it (its `contentBytes`
/// decoded) or upload session opened for it (its `PUT` ranges put back
/// in place).
fn sent_draft(calls: &[GraphCall], id: &str) -> Option<(Vec<u8>, Vec<SavedAttachment>)> {
    // The id is `AAMkDraft-{n}=`, n counting the calls up to its creation.
    let created = calls
        .iter()
        .enumerate()
        .position(|(i, c)| c.kind() == "POST messages" && format!("AAMkDraft-{}=", i + 1) == id)?;
    let attachments_path = format!("{}/{id}/attachments", calls[created].path);
    let session_path = format!("{attachments_path}/createUploadSession");
    let properties = |item: &serde_json::Value| {
        serde_json::json!({
            "name": item["name"],
            "contentType": item["contentType"],
            "isInline": item["isInline"],
            "contentId": item["contentId"],
        })
    };
    let mut attachments = Vec::new();
    for (i, call) in calls.iter().enumerate().skip(created + 1) {
        if call.method != "POST" {
            continue;
        }
        if call.path == attachments_path {
            let json = call.json();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(json["contentBytes"].as_str().unwrap_or_default())
                .ok()?;
            attachments.push(SavedAttachment {
                bytes,
                properties: properties(&json),
            });
        } else if call.path == session_path {
            // Its upload URL is `/upload/session-{n}`, n as for drafts.
            let upload_path = format!("/upload/session-{}", i + 1);
            let item = &call.json()["AttachmentItem"];
            let mut bytes = vec![0; item["size"].as_u64()? as usize];
            for put in calls.iter().filter(|c| c.path == upload_path) {
                let start: usize = put
                    .content_range
                    .strip_prefix("bytes ")?
                    .split('-')
                    .next()?
                    .parse()
                    .ok()?;
                bytes
                    .get_mut(start..start + put.body.len())?
                    .copy_from_slice(&put.body);
            }
            attachments.push(SavedAttachment {
                bytes,
                properties: properties(item),
            });
        }
    }
    Some((calls[created].mime(), attachments))
}

/// Writes a delivered message to `dir` under the next number `N`: `N.eml`,
/// and for each attachment `N.att-K` and `N.att-K.json` (K from 1).
fn save(
    state: &GraphState,
    dir: &std::path::Path,
    mime: &[u8],
    attachments: &[SavedAttachment],
) -> std::io::Result<()> {
    let n = {
        let mut saved = state.saved.lock().unwrap();
        *saved += 1;
        *saved
    };
    for (k, attachment) in attachments.iter().enumerate() {
        let file = dir.join(format!("{n}.att-{}", k + 1));
        std::fs::write(&file, &attachment.bytes)?;
        std::fs::write(
            dir.join(format!("{n}.att-{}.json", k + 1)),
            attachment.properties.to_string(),
        )?;
    }
    // All written before the answer, so before the client hears 250.
    std::fs::write(dir.join(format!("{n}.eml")), mime)
}
