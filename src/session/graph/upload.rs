//! A message too big for one `sendMail` request, sent through a draft:
//! the MIME without its largest attachments becomes a draft
//! (`POST /messages`, MIME in base64), each attachment cut out is added
//! to it (a `fileAttachment` when small, else an upload session), then
//! the draft is sent (`POST /messages/{id}/send`).
//!
//! What Microsoft documents, and this follows:
//! - `POST /users/{id}/messages` with `Content-Type: text/plain` and the
//!   MIME in base64 creates a draft (201, the message with its `id`);
//!   delegated and application permission: `Mail.ReadWrite`.
//! - A file under 3 MB: `POST /messages/{id}/attachments` with a
//!   `#microsoft.graph.fileAttachment` (201).
//! - 3 MB to 150 MB: `POST /messages/{id}/attachments/createUploadSession`
//!   with an `AttachmentItem` (201, `uploadUrl`), then sequential `PUT`s of
//!   byte ranges, up to 4 MB each, with `Content-Range` and
//!   `Content-Length`: 200 with `nextExpectedRanges` (`"{start}"` for
//!   Outlook) until the last, 201. The `uploadUrl` is pre-authenticated
//!   (a token in its query): it gets no `Authorization` header and is
//!   never logged whole (its host only).
//! - Exchange Online's default maximum message size is 35 MB.
//!
//! Nothing is sent twice: only the final `/send` can send. A failure
//! before it deletes the draft (best effort, logged) and the client hears
//! that nothing was sent.

use std::time::Duration;

use base64::Engine as _;
use secrecy::{ExposeSecret as _, SecretString};
use tokio::time::Instant;

use super::{GRAPH_MAX_MESSAGE, GRAPH_SEND_TIMEOUT, error_code, path_segment, refusal};
use crate::auth::http::HttpClient;
use crate::escape::log_text;
use crate::protocol::smtp::large::{Detached, SplitError, split_to_fit};

/// The largest message taken through a draft. Exchange Online's default
/// maximum message size is 35 MB (an administrator may raise it, up to
/// 150 MB; Graph's upload sessions take attachments up to 150 MB): a
/// larger message would be refused by the mailbox anyway after every
/// upload. MiB rather than MB because a tenant's limit counts the
/// message as Exchange stores it, a little larger than the MIME.
///
/// The whole message is held in memory during DATA and while it is sent:
/// the client's copy with the `Bcc:` added, then the draft's MIME and the
/// decoded attachments (which together are smaller than the message):
/// about twice the message at the peak, so up to 70 MiB for a session
/// sending a message at this limit.
pub const GRAPH_MAX_LARGE_MESSAGE: usize = 35 * 1024 * 1024;

/// An attachment up to this size is posted whole as a `fileAttachment`:
/// Graph's documented limit for that request is 3 MB, and its base64 in
/// the JSON body (4 000 000 octets and a few names) stays under the
/// 4 MiB request limit.
const ATTACHMENT_POST_MAX: usize = 3_000_000;

/// Octets per `PUT` of an upload session: 8 × 320 KiB. Graph takes up to
/// 4 MB per request; Graph's upload sessions (OneDrive's and Outlook's)
/// want ranges in multiples of 320 KiB; 2.5 MiB keeps few round trips
/// with room under the limit.
const UPLOAD_CHUNK: usize = 8 * 320 * 1024;

/// The longest the whole exchange for one large message may take before
/// the `/send`: the client waits for the reply to its DATA at least 10
/// minutes (RFC 5321 §4.5.3.2.6); this answers before it gives up, and
/// covers 35 MiB at about 0.6 Mbit/s.
const GRAPH_LARGE_DEADLINE: Duration = Duration::from_secs(9 * 60);

/// What a token for a large message must have left: the whole exchange,
/// and a minute for the `/send` itself.
pub(super) const TOKEN_LASTING: Duration = Duration::from_secs(GRAPH_LARGE_DEADLINE.as_secs() + 60);

// The limits against Graph's documented ones, checked when compiling.
const _: () = {
    assert!(GRAPH_MAX_LARGE_MESSAGE <= 35 * 1024 * 1024);
    assert!(UPLOAD_CHUNK.is_multiple_of(320 * 1024) && UPLOAD_CHUNK < 4_000_000);
    // A fileAttachment's JSON (base64 and a little more) under 4 MiB.
    assert!(ATTACHMENT_POST_MAX.div_ceil(3) * 4 + 4096 < 4 * 1024 * 1024);
};

/// Longest draft id taken from Graph (ids are about 150 characters).
const MAX_DRAFT_ID: usize = 1024;

/// Who sends, and where.
pub(super) struct Draft<'a> {
    pub http: HttpClient,
    /// `{graph_url}/v1.0/users/{mailbox}`
    pub user_url: String,
    pub token: &'a SecretString,
    pub peer: std::net::SocketAddr,
    pub account: &'a str,
    pub mailbox: &'a str,
}

/// A step that failed before the `/send`: nothing was sent.
struct Failed {
    reply: Vec<u8>,
    /// Graph answered 401 for the token.
    token_refused: bool,
}

impl Failed {
    fn reply(text: &str) -> Failed {
        Failed {
            reply: text.as_bytes().to_vec(),
            token_refused: false,
        }
    }
}

/// The reply to the end of DATA for `mime` (the client's message with its
/// `Bcc:`), sent through a draft; `token_refused` is called on a 401.
pub(super) async fn send_large(
    draft: &Draft<'_>,
    mime: Vec<u8>,
    token_refused: impl FnOnce(),
) -> Vec<u8> {
    let (peer, account, mailbox) = (draft.peer, draft.account, draft.mailbox);
    let octets = mime.len();
    let split = match split_to_fit(&mime, GRAPH_MAX_MESSAGE) {
        Ok(split) => split,
        Err(SplitError::TooBig { remaining }) => {
            tracing::warn!(%peer, %account, octets, without_attachments = remaining,
                "message too big for Microsoft Graph even without its attachments: not sent");
            return format!(
                "552 5.3.4 Message too big for Microsoft Graph: without its attachments it is still \
                 {remaining} octets, at most {GRAPH_MAX_MESSAGE} can go in one request (message not sent)\r\n"
            )
            .into_bytes();
        }
    };
    drop(mime);
    let deadline = Instant::now() + GRAPH_LARGE_DEADLINE;
    let id = match create_draft(draft, &split.remaining, deadline).await {
        Ok(id) => id,
        Err(failed) => {
            if failed.token_refused {
                token_refused();
            }
            return failed.reply;
        }
    };
    let attachments = split.detached.len();
    for (i, part) in split.detached.iter().enumerate() {
        if let Err(failed) = attach(draft, &id, part, deadline).await {
            tracing::warn!(%peer, %account, %mailbox, attachment = i + 1, attachments,
                "a large message's attachment did not reach its draft: message not sent");
            delete_draft(draft, &id).await;
            if failed.token_refused {
                token_refused();
            }
            return failed.reply;
        }
    }
    if Instant::now() >= deadline {
        tracing::warn!(%peer, %account, %mailbox, "a large message took too long to upload: not sent");
        delete_draft(draft, &id).await;
        return b"451 4.4.7 Uploading the message to Microsoft Graph took too long; try again later (message not sent)\r\n"
            .to_vec();
    }
    send_draft(draft, &id, octets, attachments, token_refused).await
}

/// `POST /messages` with the MIME: the draft's id.
async fn create_draft(draft: &Draft<'_>, mime: &[u8], deadline: Instant) -> Result<String, Failed> {
    let body = base64::engine::general_purpose::STANDARD.encode(mime);
    let request = http::Request::post(format!("{}/messages", draft.user_url))
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header(http::header::AUTHORIZATION, bearer(draft.token))
        .body(body.into_bytes());
    let response = created(draft, request, deadline, "create the draft").await?;
    let id = json_string(response.body(), "id")
        .filter(|id| !id.is_empty() && id.len() <= MAX_DRAFT_ID)
        .ok_or_else(|| {
            tracing::warn!(peer = %draft.peer, account = %draft.account,
                "Microsoft Graph created a draft without a usable id: message not sent");
            Failed::reply(
                "451 4.4.0 Microsoft Graph gave no usable draft id (message not sent)\r\n",
            )
        })?;
    tracing::debug!(peer = %draft.peer, account = %draft.account, draft = %log_text(&id), "draft created");
    Ok(id)
}

/// One attachment onto the draft: whole, or through an upload session.
async fn attach(
    draft: &Draft<'_>,
    id: &str,
    part: &Detached,
    deadline: Instant,
) -> Result<(), Failed> {
    let attachments = format!("{}/messages/{}/attachments", draft.user_url, id_segment(id));
    if part.bytes.len() <= ATTACHMENT_POST_MAX {
        let mut json = serde_json::json!({
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": part.name,
            "contentType": part.content_type,
            "contentBytes": base64::engine::general_purpose::STANDARD.encode(&part.bytes),
            "isInline": part.inline,
        });
        if let Some(cid) = &part.content_id {
            json["contentId"] = cid.as_str().into();
        }
        let request = json_post(draft, attachments, &json);
        created(draft, request, deadline, "add an attachment").await?;
        return Ok(());
    }
    let mut item = serde_json::json!({
        "attachmentType": "file",
        "name": part.name,
        "size": part.bytes.len(),
        "contentType": part.content_type,
        "isInline": part.inline,
    });
    if let Some(cid) = &part.content_id {
        item["contentId"] = cid.as_str().into();
    }
    let json = serde_json::json!({ "AttachmentItem": item });
    let url = format!("{attachments}/createUploadSession");
    let request = json_post(draft, url, &json);
    let response = created(draft, request, deadline, "open an upload session").await?;
    let Some(upload_url) =
        json_string(response.body(), "uploadUrl").and_then(|u| url::Url::parse(&u).ok())
    else {
        tracing::warn!(peer = %draft.peer, account = %draft.account,
            "Microsoft Graph opened an upload session without a usable uploadUrl: message not sent");
        return Err(Failed::reply(
            "451 4.4.0 Microsoft Graph gave no usable upload URL (message not sent)\r\n",
        ));
    };
    // HTTPS, as Graph itself (plain HTTP only beside a plain-HTTP
    // `graph_url`, a local fake).
    let scheme_ok = match upload_url.scheme() {
        "https" => true,
        "http" => draft.user_url.starts_with("http://"),
        _ => false,
    };
    if !scheme_ok {
        return Err(Failed::reply(
            "451 4.4.0 Microsoft Graph gave no usable upload URL (message not sent)\r\n",
        ));
    }
    upload(draft, &upload_url, &part.bytes, deadline).await
}

/// The bytes `PUT` in ranges to the pre-authenticated `upload_url`.
async fn upload(
    draft: &Draft<'_>,
    upload_url: &url::Url,
    bytes: &[u8],
    deadline: Instant,
) -> Result<(), Failed> {
    // The URL's query carries a token: only its host is ever logged.
    let host = upload_url.host_str().unwrap_or("-").to_owned();
    let total = bytes.len();
    let mut start = 0;
    for chunk in bytes.chunks(UPLOAD_CHUNK) {
        let end = start + chunk.len();
        let request = http::Request::put(upload_url.as_str())
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .header(http::header::CONTENT_LENGTH, chunk.len())
            .header(
                http::header::CONTENT_RANGE,
                format!("bytes {start}-{}/{total}", end - 1),
            )
            .body(chunk.to_vec());
        let response = call(draft, request, deadline, "upload an attachment").await?;
        let status = response.status().as_u16();
        let last = end == total;
        let expected = match (last, status) {
            (true, 200 | 201) => true,
            (false, 200 | 202) => next_expected(response.body()) == Some(end),
            _ => false,
        };
        if !expected {
            tracing::warn!(peer = %draft.peer, account = %draft.account, upload_host = %log_text(&host),
                status, range_end = end, total, "an upload session refused a range");
            return Err(Failed {
                reply: refusal_not_sent(status, &error_code(response.body())),
                token_refused: false,
            });
        }
        start = end;
    }
    tracing::debug!(peer = %draft.peer, account = %draft.account, upload_host = %log_text(&host), total,
        "attachment uploaded");
    Ok(())
}

/// `POST /messages/{id}/send`: the one request that sends.
async fn send_draft(
    draft: &Draft<'_>,
    id: &str,
    octets: usize,
    attachments: usize,
    token_refused: impl FnOnce(),
) -> Vec<u8> {
    let (peer, account, mailbox) = (draft.peer, draft.account, draft.mailbox);
    let url = format!("{}/messages/{}/send", draft.user_url, id_segment(id));
    let request = http::Request::post(url)
        .header(http::header::AUTHORIZATION, bearer(draft.token))
        .header(http::header::CONTENT_LENGTH, 0)
        .body(Vec::new());
    let Ok(request) = request else {
        delete_draft(draft, id).await;
        return b"451 4.3.0 Cannot build the request to Microsoft Graph (message not sent)\r\n"
            .to_vec();
    };
    match draft.http.send_api(request, GRAPH_SEND_TIMEOUT).await {
        Ok(response) if response.status().as_u16() == 202 => {
            tracing::info!(%peer, %account, %mailbox, octets, attachments,
                "large message sent through a Microsoft Graph draft");
            b"250 2.0.0 Message accepted by Microsoft Graph for delivery\r\n".to_vec()
        }
        Ok(response) => {
            let status = response.status().as_u16();
            let code = error_code(response.body());
            tracing::warn!(%peer, %account, %mailbox, status, graph_error = %code,
                "Microsoft Graph refused to send the draft");
            delete_draft(draft, id).await;
            if status == 401 {
                token_refused();
            }
            refusal(status, &code).into_bytes()
        }
        Err(e) if e.unsent => {
            tracing::warn!(%peer, %account, error = %e, "cannot reach Microsoft Graph to send the draft: not sent");
            delete_draft(draft, id).await;
            b"451 4.4.1 Cannot reach Microsoft Graph now; try again later (message not sent)\r\n"
                .to_vec()
        }
        Err(e) => {
            tracing::warn!(%peer, %account, error = %e, octets,
                "no answer from Microsoft Graph after the draft was sent: it MAY HAVE BEEN DELIVERED; \
                 the client is told to try later, so a copy may arrive twice");
            b"451 4.4.2 No answer from Microsoft Graph; the message may have been sent (check Sent Items before sending again)\r\n"
                .to_vec()
        }
    }
}

/// `DELETE /messages/{id}`, best effort: a draft left behind is logged.
async fn delete_draft(draft: &Draft<'_>, id: &str) {
    let url = format!("{}/messages/{}", draft.user_url, id_segment(id));
    let Ok(request) = http::Request::delete(url)
        .header(http::header::AUTHORIZATION, bearer(draft.token))
        .body(Vec::new())
    else {
        return;
    };
    match draft.http.send_api(request, GRAPH_SEND_TIMEOUT).await {
        Ok(r) if r.status().is_success() => {
            tracing::info!(peer = %draft.peer, account = %draft.account, "the unsent draft was deleted");
        }
        Ok(r) => {
            tracing::warn!(peer = %draft.peer, account = %draft.account, status = r.status().as_u16(),
            "the unsent draft could not be deleted: it stays in the mailbox's Drafts")
        }
        Err(e) => tracing::warn!(peer = %draft.peer, account = %draft.account, error = %e,
            "the unsent draft could not be deleted: it stays in the mailbox's Drafts"),
    }
}

/// Sends one request before the `/send`, within the per-request timeout
/// and what is left of `deadline`; every failure means nothing was sent.
async fn call(
    draft: &Draft<'_>,
    request: Result<http::Request<Vec<u8>>, http::Error>,
    deadline: Instant,
    what: &str,
) -> Result<http::Response<Vec<u8>>, Failed> {
    let (peer, account) = (draft.peer, draft.account);
    let request = request.map_err(|e| {
        tracing::error!(%peer, %account, error = %e, "cannot build the request to {what}");
        Failed::reply(
            "451 4.3.0 Cannot build the request to Microsoft Graph (message not sent)\r\n",
        )
    })?;
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        tracing::warn!(%peer, %account, "a large message took too long to upload: not sent");
        return Err(Failed::reply(
            "451 4.4.7 Uploading the message to Microsoft Graph took too long; try again later (message not sent)\r\n",
        ));
    }
    draft
        .http
        .send_api(request, GRAPH_SEND_TIMEOUT.min(left))
        .await
        .map_err(|e| {
            if e.unsent {
                tracing::warn!(%peer, %account, error = %e, "cannot reach Microsoft Graph to {what}: message not sent");
                return Failed::reply(
                    "451 4.4.1 Cannot reach Microsoft Graph now; try again later (message not sent)\r\n",
                );
            }
            // Only the `/send` sends: an unanswered step before it sent
            // nothing, though a draft it created may stay in Drafts.
            tracing::warn!(%peer, %account, error = %e,
                "no answer from Microsoft Graph to {what}: message not sent (a draft may remain in Drafts)");
            Failed::reply(
                "451 4.4.2 No answer from Microsoft Graph in time; try again later (message not sent)\r\n",
            )
        })
}

/// [`call`], for a request that creates something: anything but `201
/// Created` is Graph's refusal.
async fn created(
    draft: &Draft<'_>,
    request: Result<http::Request<Vec<u8>>, http::Error>,
    deadline: Instant,
    what: &str,
) -> Result<http::Response<Vec<u8>>, Failed> {
    let response = call(draft, request, deadline, what).await?;
    let status = response.status().as_u16();
    if status != 201 {
        return Err(graph_refused(draft, status, response.body(), what));
    }
    Ok(response)
}

/// A refusal before the `/send`, logged, as the client's reply.
fn graph_refused(draft: &Draft<'_>, status: u16, body: &[u8], what: &str) -> Failed {
    let code = error_code(body);
    tracing::warn!(peer = %draft.peer, account = %draft.account, mailbox = %draft.mailbox, status,
        graph_error = %code, "Microsoft Graph refused to {what}: message not sent");
    let reply = if status == 403 {
        format!(
            "550 5.7.1 Microsoft Graph refused to {what}: a message over {GRAPH_MAX_MESSAGE} octets goes \
             through a draft, which needs the Mail.ReadWrite permission besides Mail.Send \
             (Mail.ReadWrite.Shared for a shared mailbox) (HTTP 403, {code})\r\n"
        )
        .into_bytes()
    } else {
        refusal_not_sent(status, &code)
    };
    Failed {
        reply,
        token_refused: status == 401,
    }
}

/// [`refusal`], saying that nothing was sent.
fn refusal_not_sent(status: u16, code: &str) -> Vec<u8> {
    let reply = refusal(status, code);
    format!("{} (message not sent)\r\n", reply.trim_end()).into_bytes()
}

fn json_post(
    draft: &Draft<'_>,
    url: String,
    json: &serde_json::Value,
) -> Result<http::Request<Vec<u8>>, http::Error> {
    http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, bearer(draft.token))
        .body(json.to_string().into_bytes())
}

fn bearer(token: &SecretString) -> String {
    format!("Bearer {}", token.expose_secret())
}

fn json_string(body: &[u8], key: &str) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()?
        .get(key)?
        .as_str()
        .map(str::to_owned)
}

/// The start of `nextExpectedRanges`' first range (`"123-"` or `"123"`).
fn next_expected(body: &[u8]) -> Option<usize> {
    let value = serde_json::from_slice::<serde_json::Value>(body).ok()?;
    let first = value.get("nextExpectedRanges")?.get(0)?.as_str()?;
    first.split('-').next()?.trim().parse().ok()
}

/// A draft id as one path segment: [`path_segment`], with `=` (base64
/// padding in Graph's ids, a sub-delimiter allowed in a segment) kept.
fn id_segment(id: &str) -> String {
    path_segment(id).replace("%3D", "=")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_expected_ranges_are_read_in_both_forms() {
        assert_eq!(
            next_expected(br#"{"nextExpectedRanges":["2621440"]}"#),
            Some(2621440)
        );
        assert_eq!(
            next_expected(br#"{"nextExpectedRanges":["10-"]}"#),
            Some(10)
        );
        assert_eq!(next_expected(br#"{"nextExpectedRanges":[]}"#), None);
        assert_eq!(next_expected(b"garbage"), None);
    }

    #[test]
    fn draft_ids_keep_their_padding_and_lose_slashes() {
        assert_eq!(id_segment("AAMk-AD_x="), "AAMk-AD_x=");
        assert_eq!(id_segment("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn refusals_before_the_send_say_nothing_was_sent() {
        let reply = String::from_utf8(refusal_not_sent(503, "x")).unwrap();
        assert!(
            reply.starts_with("451 4.4.0") && reply.ends_with("(message not sent)\r\n"),
            "{reply}"
        );
        assert_eq!(reply.matches('\n').count(), 1);
    }
}
