//! A fake Microsoft Graph `sendMail` endpoint over plain HTTP on 127.0.0.1:
//! checks the bearer token against the fake token server, answers with
//! the statuses a test scripts (202 when none is left), and records every
//! request it received (mailbox, token, content type, decoded MIME).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
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

#[derive(Default)]
pub struct GraphState {
    pub requests: Mutex<Vec<GraphRequest>>,
    pub script: Mutex<VecDeque<GraphAnswer>>,
    /// Where each accepted message is also written (`N.eml`), for the
    /// interop suite's stand-alone fake (`examples/fake_token_server.rs`).
    pub save_dir: Mutex<Option<std::path::PathBuf>>,
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
        .layer(DefaultBodyLimit::max(16 * 1024 * 1024))
        .with_state((state, tokens))
}

async fn send_mail(
    State((state, tokens)): State<(Arc<GraphState>, Arc<TokenState>)>,
    Path(mailbox): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let get = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
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
            let requests = state.requests.lock().unwrap();
            let last = requests.last().expect("this request");
            let file = dir.join(format!("{}.eml", requests.len()));
            if let Err(e) = std::fs::write(&file, &last.mime) {
                eprintln!("fake Graph: cannot write {}: {e}", file.display());
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
