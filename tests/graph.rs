//! An SMTP listener with `backend = "graph"`, end to end: a mail client
//! logs in as with the relay, and each message reaches a fake Microsoft
//! Graph `sendMail` byte for byte (a `Bcc:` for envelope-only recipients
//! aside), with the replies Graph's answers map to.

mod harness;
mod support;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use harness::{PASSWORD, Setup, setup, start};
use support::graph_server::FakeGraphServer;
use support::*;

struct GraphProxy {
    setup: Setup,
    graph: FakeGraphServer,
    running: xoauth2_proxy::Running,
    /// The configuration it runs (for a reload).
    text: String,
}

impl GraphProxy {
    fn addr(&self) -> std::net::SocketAddr {
        self.running.addrs[0]
    }

    /// After a reload of `text` (or of the same configuration again).
    async fn reloaded(self, text: Option<String>) -> GraphProxy {
        let text = text.unwrap_or(self.text);
        let config =
            xoauth2_proxy::config::Config::parse(&text, std::path::Path::new("proxy.toml"))
                .expect("the configuration parses");
        let (running, outcome) = self.running.reload(config).await;
        outcome.expect("reload");
        GraphProxy {
            running,
            text,
            ..self
        }
    }
}

/// A Graph listener for [`USER`] (sealed tokens, [`PASSWORD`]) with the
/// listener lines `extra` and account lines `account_extra`.
async fn graph_proxy_with(s: Setup, extra: &str, account_extra: &str) -> GraphProxy {
    graph_proxy_in(s, "", extra, account_extra).await
}

/// [`graph_proxy_with`] with `proxy_extra` in `[proxy]`.
async fn graph_proxy_in(
    s: Setup,
    proxy_extra: &str,
    extra: &str,
    account_extra: &str,
) -> GraphProxy {
    let graph = FakeGraphServer::start(s.tokens.state.clone()).await;
    // No upstream: the listener's messages go to Graph.
    let mut text = s.config(&[], proxy_extra);
    text.push_str(&format!(
        "graph_url = \"{}\"\n{account_extra}\n[[listener]]\nprotocol = \"smtp\"\n\
         listen = \"127.0.0.1:0\"\nbackend = \"graph\"\n{extra}\n",
        graph.url()
    ));
    let running = start(&text).await;
    GraphProxy {
        setup: s,
        graph,
        running,
        text,
    }
}

async fn graph_proxy() -> GraphProxy {
    graph_proxy_with(setup().await, "", "").await
}

async fn greeted(p: &GraphProxy) -> TestClient {
    let mut c = TestClient::connect(p.addr()).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO client.example\r\n").await;
    let lines = c.expect_smtp(250).await;
    let text: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).trim_end().to_owned())
        .collect();
    for keyword in [
        "SIZE 36700160",
        "8BITMIME",
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "AUTH PLAIN LOGIN",
    ] {
        assert!(
            text.iter().any(|l| l.ends_with(keyword)),
            "{keyword} in {text:?}"
        );
    }
    assert!(!text.iter().any(|l| l.contains("CHUNKING")), "{text:?}");
    c
}

async fn logged_in_plain(p: &GraphProxy) -> TestClient {
    let mut c = greeted(p).await;
    let ir = B64.encode(format!("\0{USER}\0{PASSWORD}"));
    c.send(format!("AUTH PLAIN {ir}\r\n").as_bytes()).await;
    c.expect_smtp(235).await;
    c
}

/// One transaction; returns the reply code to the end of DATA.
async fn send(c: &mut TestClient, recipients: &[&str], body: &[u8]) -> (u16, String) {
    c.send(format!("MAIL FROM:<{USER}>\r\n").as_bytes()).await;
    c.expect_smtp(250).await;
    for r in recipients {
        c.send(format!("RCPT TO:<{r}>\r\n").as_bytes()).await;
        c.expect_smtp(250).await;
    }
    c.send(b"DATA\r\n").await;
    c.expect_smtp(354).await;
    c.send(&dot_stuff(body)).await;
    let reply = c.read_smtp_reply().await;
    let text = String::from_utf8_lossy(reply.last().unwrap()).into_owned();
    (text[..3].parse().unwrap(), text)
}

const MESSAGE: &[u8] = b"From: user@example.test\r\nTo: Bob <bob@example.test>\r\nSubject: caf\xc3\xa9\r\n\
    MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
    .leading dot\r\n.\r\n..two\r\nraw \xff\x80 octets\r\n";

#[tokio::test]
async fn auth_plain_sends_the_message_byte_exact_with_a_bcc_for_the_hidden_recipient() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    let (code, text) = send(
        &mut c,
        &["bob@example.test", "hidden@example.test"],
        MESSAGE,
    )
    .await;
    assert_eq!(code, 250, "{text}");
    assert!(text.contains("2.0.0"), "{text}");
    c.send(b"QUIT\r\n").await;
    c.expect_smtp(221).await;
    let got = p.graph.state.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].mailbox, USER);
    assert_eq!(got[0].content_type, "text/plain");
    assert!(got[0].token_valid, "a token the token server issued");
    let mut want = b"Bcc: <hidden@example.test>\r\n".to_vec();
    want.extend_from_slice(MESSAGE);
    assert_eq!(
        got[0].mime.escape_ascii().to_string(),
        want.escape_ascii().to_string()
    );
}

#[tokio::test]
async fn auth_login_sends_a_message_whose_header_names_everyone_unchanged() {
    let p = graph_proxy().await;
    let mut c = greeted(&p).await;
    c.send(b"AUTH LOGIN\r\n").await;
    c.expect(b"334 VXNlcm5hbWU6").await;
    c.send(format!("{}\r\n", B64.encode(USER)).as_bytes()).await;
    c.expect(b"334 UGFzc3dvcmQ6").await;
    c.send(format!("{}\r\n", B64.encode(PASSWORD)).as_bytes())
        .await;
    c.expect_smtp(235).await;
    let (code, _) = send(&mut c, &["bob@example.test"], MESSAGE).await;
    assert_eq!(code, 250);
    let got = p.graph.state.requests();
    assert_eq!(got[0].mime, MESSAGE);
}

#[tokio::test]
async fn a_wrong_password_sends_nothing() {
    let p = graph_proxy().await;
    let mut c = greeted(&p).await;
    let ir = B64.encode(format!("\0{USER}\0wrong"));
    c.send(format!("AUTH PLAIN {ir}\r\n").as_bytes()).await;
    c.expect_smtp(535).await;
    c.send(format!("MAIL FROM:<{USER}>\r\n").as_bytes()).await;
    c.expect_smtp(530).await;
    assert!(p.graph.state.requests().is_empty());
}

#[tokio::test]
async fn the_size_limit_is_offered_and_enforced_for_size_and_data() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    c.send(format!("MAIL FROM:<{USER}> SIZE=36700161\r\n").as_bytes())
        .await;
    let reply = c.expect_smtp(552).await;
    assert!(String::from_utf8_lossy(&reply[0]).contains("5.3.4"));
    c.send(format!("MAIL FROM:<{USER}> SIZE=36700160\r\n").as_bytes())
        .await;
    c.expect_smtp(250).await;
    c.send(b"RSET\r\n").await;
    c.expect_smtp(250).await;
    let mut big = b"To: bob@example.test\r\n\r\n".to_vec();
    while big.len() <= 35 * 1024 * 1024 {
        big.extend_from_slice(&[b'x'; 998]);
        big.extend_from_slice(b"\r\n");
    }
    let (code, text) = send(&mut c, &["bob@example.test"], &big).await;
    assert_eq!(code, 552, "{text}");
    assert!(
        text.contains("5.3.4") && text.contains("36700160"),
        "{text}"
    );
    assert!(p.graph.state.calls().is_empty(), "nothing created");
    // The session goes on.
    let (code, _) = send(&mut c, &["bob@example.test"], MESSAGE).await;
    assert_eq!(code, 250);
    assert_eq!(p.graph.state.requests().len(), 1);
}

#[tokio::test]
async fn graph_refusals_map_to_smtp_replies_and_nothing_is_sent_twice() {
    let p = graph_proxy().await;
    let table: &[(u16, &str, Option<u64>, &str)] = &[
        (401, "InvalidAuthenticationToken", None, "535 5.7.8"),
        (403, "ErrorAccessDenied", None, "550 5.7.1"),
        (403, "ErrorSendAsDenied", None, "550 5.7.60"),
        (413, "RequestEntityTooLarge", None, "552 5.3.4"),
        (429, "ApplicationThrottled", Some(30), "451 4.4.5"),
        (503, "ServiceUnavailable", None, "451 4.4.0"),
    ];
    let mut c = logged_in_plain(&p).await;
    for (status, code, retry_after, want) in table {
        p.graph.state.answer_next(*status, code, *retry_after);
        let (_, text) = send(&mut c, &["bob@example.test"], MESSAGE).await;
        assert!(text.starts_with(want), "{status}: {text}");
        assert!(text.contains(code), "{status}: {text}");
    }
    assert_eq!(
        p.graph.state.requests().len(),
        table.len(),
        "one request per message"
    );
}

#[tokio::test]
async fn a_token_is_refreshed_between_two_messages_and_the_rotation_kept() {
    let s = setup().await;
    // Every Graph token is inside the refresh margin: each message needs a new one.
    s.tokens.state.set_access_token_lifetime(30);
    s.tokens.state.set_single_use_refresh_tokens(true);
    let p = graph_proxy_with(s, "", "").await;
    let mut c = logged_in_plain(&p).await;
    let before = p.setup.tokens.state.requests("refresh_token");
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    assert_eq!(p.setup.tokens.state.requests("refresh_token"), before + 2);
    let got = p.graph.state.requests();
    assert!(got.iter().all(|r| r.token_valid));
    assert_ne!(got[0].bearer, got[1].bearer);
    // The rotated refresh token is the one on disk: a new login still works.
    drop(c);
    let mut c = logged_in_plain(&p).await;
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
}

#[tokio::test]
async fn a_fixed_account_sends_without_login_only_as_its_allowed_senders() {
    let s = setup().await;
    harness::seed_unattended_tokens(s.state_dir.path(), &s.tokens);
    let hash = xoauth2_proxy::auth::password::hash_password(b"unused").expect("hash");
    let p = graph_proxy_with(
        s,
        &format!(
            "allow_from = [\"127.0.0.0/8\"]\nallow_plaintext = true\nfixed_account = \"{USER}\"\n\
             allowed_senders = [\"scanner@example.test\"]\nmax_recipients = 2"
        ),
        &format!("password_hash = \"{hash}\"\n"),
    )
    .await;
    let mut c = TestClient::connect(p.addr()).await;
    c.expect_smtp(220).await;
    c.send(b"EHLO scanner\r\n").await;
    c.expect_smtp(250).await;
    c.send(b"MAIL FROM:<other@example.test>\r\n").await;
    c.expect_smtp(550).await;
    c.send(b"MAIL FROM:<scanner@example.test>\r\n").await;
    c.expect_smtp(250).await;
    for (r, code) in [
        ("a@example.test", 250),
        ("b@example.test", 250),
        ("c@example.test", 452),
    ] {
        c.send(format!("RCPT TO:<{r}>\r\n").as_bytes()).await;
        c.expect_smtp(code).await;
    }
    c.send(b"DATA\r\n").await;
    c.expect_smtp(354).await;
    let scan = b"From: scanner@example.test\r\nSubject: scan\r\n\r\nscan\r\n";
    c.send(&dot_stuff(scan)).await;
    c.expect_smtp(250).await;
    // Every transaction is checked, not only the first.
    c.send(b"MAIL FROM:<other@example.test>\r\n").await;
    c.expect_smtp(550).await;
    let got = p.graph.state.requests();
    assert_eq!(got.len(), 1);
    let mut want = b"Bcc: <a@example.test>, <b@example.test>\r\n".to_vec();
    want.extend_from_slice(scan);
    assert_eq!(got[0].mime, want);
}

#[tokio::test]
async fn a_shared_mailbox_sends_as_itself_with_mail_send_shared() {
    let p = graph_proxy_with(setup().await, "", "mailbox = \"shared@example.test\"\n").await;
    let mut c = logged_in_plain(&p).await;
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    let got = p.graph.state.requests();
    assert_eq!(got[0].mailbox, "shared@example.test");
    let form = p.setup.tokens.state.last_form().expect("a token request");
    let scope = form.get("scope").cloned().unwrap_or_default();
    assert!(
        scope.contains("https://graph.microsoft.com/Mail.Send.Shared"),
        "{scope}"
    );
    assert!(scope.contains("offline_access"), "{scope}");
}

/// A Graph that takes the request and closes without an answer, or none at all.
async fn graph_at(url: String) -> (GraphProxy, TestClient) {
    let s = setup().await;
    let graph = FakeGraphServer::start(s.tokens.state.clone()).await;
    let mut text = s.config(&[], "");
    text.push_str(&format!(
        "graph_url = \"{url}\"\n\n[[listener]]\nprotocol = \"smtp\"\n\
         listen = \"127.0.0.1:0\"\nbackend = \"graph\"\n"
    ));
    let running = start(&text).await;
    let p = GraphProxy {
        setup: s,
        graph,
        running,
        text,
    };
    let c = logged_in_plain(&p).await;
    (p, c)
}

#[tokio::test]
async fn no_answer_after_the_request_went_out_is_a_451_that_says_it_may_have_gone() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (_p, mut c) = graph_at(url).await;
    let hangup = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let (mut conn, _) = silent.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut chunk = [0u8; 65536];
        // Read the whole request (headers and the base64 body), then hang up.
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.len() < 200 {
            let n = conn.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&chunk[..n]);
        }
        seen
    });
    let (code, text) = send(&mut c, &["bob@example.test"], MESSAGE).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("may have been sent"), "{text}");
    let seen = hangup.await.unwrap();
    assert!(
        seen.starts_with(b"POST /v1.0/users/"),
        "{}",
        seen.escape_ascii()
    );
}

#[tokio::test]
async fn an_unreachable_graph_is_a_451_that_says_nothing_was_sent() {
    let dead = harness::dead_addr().await;
    let (_p, mut c) = graph_at(format!("http://{dead}")).await;
    let (code, text) = send(&mut c, &["bob@example.test"], MESSAGE).await;
    assert_eq!(code, 451, "{text}");
    assert!(
        text.contains("4.4.1") && text.contains("not sent"),
        "{text}"
    );
}

#[tokio::test]
async fn doctor_says_whether_graph_answers_for_each_account() {
    use xoauth2_proxy::doctor::{Finding, check};
    let s = setup().await;
    let graph = FakeGraphServer::start(s.tokens.state.clone()).await;
    let dead = harness::dead_addr().await;
    for (url, expected) in [
        (
            graph.url(),
            format!(
                "Microsoft Graph {} answers, direct; the Graph token comes from the \
                 account's sign-in (permission Mail.Send)",
                graph.url()
            ),
        ),
        (
            format!("http://{dead}"),
            format!("Microsoft Graph http://{dead} cannot be reached direct"),
        ),
    ] {
        let mut text = s.config(&[], "");
        text.push_str(&format!(
            "graph_url = \"{url}\"\n\n[[listener]]\nprotocol = \"smtp\"\n\
             listen = \"127.0.0.1:0\"\nbackend = \"graph\"\n"
        ));
        let config =
            xoauth2_proxy::config::Config::parse(&text, std::path::Path::new("t.toml")).unwrap();
        let findings = check(&config, |_| {}).await;
        let said: Vec<String> = findings.iter().map(Finding::to_string).collect();
        assert!(
            said.iter().any(|f| f.contains(&expected)),
            "{expected}\n{said:#?}"
        );
    }
    assert!(graph.state.requests().is_empty(), "doctor sends nothing");
}

/// A refused Graph redemption leaves the account needing a sign-in while its
/// mail token still lives: the next message is refused at once, instead of
/// waiting for a refresh that nothing starts (it used to hang).
#[tokio::test]
async fn after_a_refused_redemption_the_next_message_is_refused_at_once() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    p.setup.tokens.state.set_mode(Mode::InvalidGrant);
    for attempt in 1..=2 {
        let sent = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            send(&mut c, &["bob@example.test"], MESSAGE),
        )
        .await;
        let (code, text) = sent.unwrap_or_else(|_| panic!("message {attempt}: no reply in 20 s"));
        assert_eq!(code, 535, "message {attempt}: {text}");
        assert!(text.contains("sign in again"), "{text}");
    }
    assert!(p.graph.state.requests().is_empty(), "nothing reached Graph");
}

// Large messages: through a draft, its attachments added by Graph.

/// Bytes that look like a PDF and use every octet value.
fn pdf_like(len: usize, seed: u32) -> Vec<u8> {
    let mut bytes = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    while bytes.len() < len {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push(x as u8);
    }
    bytes.truncate(len);
    bytes
}

fn base64_lines(bytes: &[u8]) -> String {
    let text = B64.encode(bytes);
    let mut out = String::with_capacity(text.len() + text.len() / 38);
    for line in text.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push_str("\r\n");
    }
    out
}

const LARGE_HEAD: &str = "From: user@example.test\r\nTo: Bob <bob@example.test>\r\nSubject: scan\r\n\
    MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_b\"\r\n\r\n";
const TEXT_PART: &str = "--=_b\r\nContent-Type: text/plain; charset=utf-8\r\n\
    Content-Transfer-Encoding: 8bit\r\n\r\nThe scan, caf\u{e9}.\r\n.leading dot\r\n";

fn attachment_part(name: &str, content_type: &str, bytes: &[u8]) -> String {
    format!(
        "--=_b\r\nContent-Type: {content_type}; name=\"{name}\"\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}",
        base64_lines(bytes)
    )
}

fn multipart(parts: &[&str]) -> Vec<u8> {
    let mut m = LARGE_HEAD.to_owned();
    for p in parts {
        m.push_str(p);
    }
    m.push_str("--=_b--\r\n");
    m.into_bytes()
}

fn kinds(calls: &[support::graph_server::GraphCall]) -> Vec<String> {
    calls.iter().map(|c| c.kind()).collect()
}

#[tokio::test]
async fn a_5_mb_scan_goes_through_a_draft_and_an_upload_session_then_one_send() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    let pdf = pdf_like(3_800_000, 1);
    let message = multipart(&[
        TEXT_PART,
        &attachment_part("scan.pdf", "application/pdf", &pdf),
    ]);
    assert!(message.len() > 5_000_000);
    let (code, text) = send(
        &mut c,
        &["bob@example.test", "hidden@example.test"],
        &message,
    )
    .await;
    assert_eq!(code, 250, "{text}");
    assert!(p.graph.state.requests().is_empty(), "no sendMail");
    let calls = p.graph.state.calls();
    assert_eq!(
        kinds(&calls),
        [
            "POST messages",
            "POST createUploadSession",
            "PUT upload",
            "PUT upload",
            "POST send"
        ]
    );
    // The draft: the client's MIME byte for byte, without the PDF's part,
    // with the Bcc for the hidden recipient.
    let draft = &calls[0];
    assert_eq!(draft.path, format!("/v1.0/users/{USER}/messages"));
    assert_eq!(draft.content_type, "text/plain");
    assert!(draft.token_valid);
    let mut want = b"Bcc: <hidden@example.test>\r\n".to_vec();
    want.extend_from_slice(&multipart(&[TEXT_PART]));
    assert_eq!(
        draft.mime().escape_ascii().to_string(),
        want.escape_ascii().to_string()
    );
    let session = &calls[1];
    assert!(session.token_valid);
    assert!(
        session
            .path
            .ends_with("/messages/AAMkDraft-1=/attachments/createUploadSession"),
        "{}",
        session.path
    );
    let item = &session.json()["AttachmentItem"];
    assert_eq!(item["attachmentType"], "file");
    assert_eq!(item["name"], "scan.pdf");
    assert_eq!(item["contentType"], "application/pdf");
    assert_eq!(item["size"], pdf.len());
    assert_eq!(item["isInline"], false);
    // The ranges: in order, 320 KiB multiples, no bearer on the upload URL.
    let mut reassembled = Vec::new();
    for put in &calls[2..4] {
        assert!(
            put.authorization.is_none(),
            "no Authorization on the upload URL"
        );
        assert!(
            put.query == format!("authtoken={}", support::graph_server::UPLOAD_SECRET),
            "the upload URL was used as given"
        );
        let start = reassembled.len();
        let end = start + put.body.len() - 1;
        assert_eq!(
            put.content_range,
            format!("bytes {start}-{end}/{}", pdf.len())
        );
        assert_eq!(put.content_length, put.body.len().to_string());
        reassembled.extend_from_slice(&put.body);
    }
    assert_eq!(calls[2].body.len() % (320 * 1024), 0);
    assert!(calls[2].body.len() < 4_000_000);
    assert!(reassembled == pdf, "the uploaded bytes are the PDF's");
    let sent = &calls[4];
    assert!(sent.path.ends_with("/messages/AAMkDraft-1=/send"));
    assert!(sent.token_valid);
}

#[tokio::test]
async fn mid_size_attachments_and_inline_images_are_posted_as_file_attachments() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    let pdf = pdf_like(2_500_000, 2);
    let message = multipart(&[
        TEXT_PART,
        &attachment_part("form.pdf", "application/pdf", &pdf),
    ]);
    let (code, text) = send(&mut c, &["bob@example.test"], &message).await;
    assert_eq!(code, 250, "{text}");
    let calls = p.graph.state.calls();
    assert_eq!(
        kinds(&calls),
        ["POST messages", "POST attachments", "POST send"]
    );
    assert_eq!(calls[0].mime(), multipart(&[TEXT_PART]));
    let json = calls[1].json();
    assert_eq!(calls[1].content_type, "application/json");
    assert!(calls[1].token_valid);
    assert_eq!(json["@odata.type"], "#microsoft.graph.fileAttachment");
    assert_eq!(json["name"], "form.pdf");
    assert_eq!(json["contentType"], "application/pdf");
    assert_eq!(json["isInline"], false);
    assert!(json.get("contentId").is_none());
    let bytes = B64.decode(json["contentBytes"].as_str().unwrap()).unwrap();
    assert!(bytes == pdf);

    // An inline image of a HTML body keeps its Content-ID.
    let png = pdf_like(2_600_000, 3);
    let related = format!(
        "--=_b\r\nContent-Type: multipart/related; boundary=\"=_r\"\r\n\r\n\
         --=_r\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@example.test\">\r\n\
         --=_r\r\nContent-Type: image/png\r\nContent-ID: <logo@example.test>\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}--=_r--\r\n",
        base64_lines(&png)
    );
    let message = multipart(&[&related]);
    let (code, text) = send(&mut c, &["bob@example.test"], &message).await;
    assert_eq!(code, 250, "{text}");
    let calls = p.graph.state.calls();
    assert_eq!(calls.len(), 6);
    let draft = String::from_utf8(calls[3].mime()).unwrap();
    assert!(
        draft.ends_with(
            "--=_r\r\nContent-Type: text/html\r\n\r\n<img src=\"cid:logo@example.test\">\r\n--=_r--\r\n--=_b--\r\n"
        ),
        "{draft}"
    );
    let json = calls[4].json();
    assert_eq!(json["contentType"], "image/png");
    assert_eq!(json["name"], "attachment");
    assert_eq!(json["isInline"], true);
    assert_eq!(json["contentId"], "logo@example.test");
    assert!(B64.decode(json["contentBytes"].as_str().unwrap()).unwrap() == png);
    assert_eq!(calls[5].kind(), "POST send");
    assert!(p.graph.state.requests().is_empty());
}

#[tokio::test]
async fn a_failed_upload_deletes_the_draft_and_sends_nothing() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    *p.graph.state.fail_upload_put.lock().unwrap() = Some(1);
    let pdf = pdf_like(3_800_000, 4);
    let message = multipart(&[
        TEXT_PART,
        &attachment_part("scan.pdf", "application/pdf", &pdf),
    ]);
    let (code, text) = send(&mut c, &["bob@example.test"], &message).await;
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("not sent"), "{text}");
    assert!(!text.contains(support::graph_server::UPLOAD_SECRET));
    let calls = p.graph.state.calls();
    assert_eq!(
        kinds(&calls),
        [
            "POST messages",
            "POST createUploadSession",
            "PUT upload",
            "PUT upload",
            "DELETE AAMkDraft-1="
        ]
    );
    assert!(calls[4].token_valid);
    // The session goes on, and the next message goes out.
    let (code, _) = send(&mut c, &["bob@example.test"], &message).await;
    assert_eq!(code, 250);
    assert_eq!(
        p.graph
            .state
            .calls()
            .iter()
            .filter(|c| c.kind() == "POST send")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_large_message_without_mail_read_write_is_refused_by_name() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    *p.graph.state.draft_status.lock().unwrap() = Some(403);
    let pdf = pdf_like(3_300_000, 5);
    let message = multipart(&[
        TEXT_PART,
        &attachment_part("scan.pdf", "application/pdf", &pdf),
    ]);
    let (code, text) = send(&mut c, &["bob@example.test"], &message).await;
    assert_eq!(code, 550, "{text}");
    assert!(
        text.contains("5.7.1") && text.contains("Mail.ReadWrite"),
        "{text}"
    );
    assert_eq!(kinds(&p.graph.state.calls()), ["POST messages"]);
    // Small messages still go out with Mail.Send alone.
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    assert_eq!(p.graph.state.requests().len(), 1);
}

#[tokio::test]
async fn a_body_too_big_without_its_attachments_is_a_552_and_creates_nothing() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    let mut body = String::new();
    while body.len() < 5_000_000 {
        body.push_str(&"text ".repeat(15));
        body.push_str("\r\n");
    }
    let text_part = format!("--=_b\r\nContent-Type: text/plain\r\n\r\n{body}");
    let pdf = pdf_like(100_000, 6);
    let message = multipart(&[
        &text_part,
        &attachment_part("a.pdf", "application/pdf", &pdf),
    ]);
    let (code, text) = send(&mut c, &["bob@example.test"], &message).await;
    assert_eq!(code, 552, "{text}");
    assert!(
        text.contains("5.3.4") && text.contains("without its attachments"),
        "{text}"
    );
    assert!(p.graph.state.calls().is_empty());
    assert!(p.graph.state.requests().is_empty());
}

#[tokio::test]
async fn a_draft_step_without_an_answer_is_a_451_that_says_nothing_was_sent() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let (_p, mut c) = graph_at(url).await;
    let hangup = tokio::spawn(async move {
        use tokio::io::AsyncReadExt as _;
        let (mut conn, _) = silent.accept().await.unwrap();
        let mut head = vec![0u8; 4096];
        let n = conn.read(&mut head).await.unwrap();
        head.truncate(n);
        head
    });
    let pdf = pdf_like(3_300_000, 7);
    let message = multipart(&[
        TEXT_PART,
        &attachment_part("scan.pdf", "application/pdf", &pdf),
    ]);
    let (code, text) = send(&mut c, &["bob@example.test"], &message).await;
    assert_eq!(code, 451, "{text}");
    assert!(
        text.contains("not sent") && !text.contains("may have been sent"),
        "{text}"
    );
    let head = hangup.await.unwrap();
    assert!(
        head.starts_with(format!("POST /v1.0/users/{USER}/messages ").as_bytes()),
        "{}",
        head.escape_ascii()
    );
}

/// A plain-text message of about `octets`, in 78-octet lines.
fn text_message(subject: &str, octets: usize) -> Vec<u8> {
    let mut m =
        format!("From: {USER}\r\nTo: bob@example.test\r\nSubject: {subject}\r\n\r\n").into_bytes();
    let line = [b"x".repeat(76), b"\r\n".to_vec()].concat();
    while m.len() < octets {
        m.extend_from_slice(&line);
    }
    m
}

/// `graph_memory_mib` bounds the message text held across sessions: while
/// one client's message is in hand, another's that would pass the bound is
/// read to its end and refused with `452 4.3.1` (nothing sent); once the
/// first is through, the second goes. The bound is also the `SIZE` offered
/// when it is below Graph's own limit.
#[tokio::test]
async fn messages_past_graph_memory_mib_get_452_and_go_once_memory_is_free() {
    const MIB: usize = 1024 * 1024;
    let p = graph_proxy_in(setup().await, "graph_memory_mib = 4\n", "", "").await;
    let memory = p.running.context.graph_memory.clone();
    let login = async |p: &GraphProxy| {
        let mut c = TestClient::connect(p.addr()).await;
        c.expect_smtp(220).await;
        c.send(b"EHLO client.example\r\n").await;
        let lines = c.expect_smtp(250).await;
        let size = format!("SIZE {}", 4 * MIB);
        assert!(
            lines
                .iter()
                .any(|l| String::from_utf8_lossy(l).contains(&size)),
            "{size} offered"
        );
        let ir = B64.encode(format!("\0{USER}\0{PASSWORD}"));
        c.send(format!("AUTH PLAIN {ir}\r\n").as_bytes()).await;
        c.expect_smtp(235).await;
        c
    };

    // A: 2.5 MiB in hand (3 MiB reserved), its end not sent yet.
    let first = text_message("first", 5 * MIB / 2);
    let mut a = login(&p).await;
    a.send(format!("MAIL FROM:<{USER}>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n").as_bytes())
        .await;
    a.expect_smtp(250).await;
    a.expect_smtp(250).await;
    a.expect_smtp(354).await;
    a.send(&first).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while memory.used() < 3 * MIB {
        assert!(
            std::time::Instant::now() < deadline,
            "A's message is not held"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // B: 2 MiB more would pass 4 MiB.
    let second = text_message("second", 2 * MIB);
    let mut b = login(&p).await;
    let (code, text) = send(&mut b, &["bob@example.test"], &second).await;
    assert_eq!(code, 452, "{text}");
    assert!(text.contains("4.3.1"), "{text}");
    assert!(p.graph.state.requests().is_empty(), "nothing sent yet");

    // A ends its message: it goes, and its memory is free again.
    a.send(b".\r\n").await;
    let reply = a.read_smtp_reply().await;
    let text = String::from_utf8_lossy(reply.last().unwrap()).into_owned();
    assert!(text.starts_with("250 2.0.0"), "{text}");
    assert_eq!(memory.used(), 0);
    // B again, now with room.
    let (code, text) = send(&mut b, &["bob@example.test"], &second).await;
    assert_eq!(code, 250, "{text}");
    let got = p.graph.state.requests();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].mime, first);
    assert_eq!(got[1].mime, second);
    for c in [&mut a, &mut b] {
        c.send(b"QUIT\r\n").await;
        c.expect_smtp(221).await;
    }
    assert_eq!(memory.used(), 0);
}

/// A reload that leaves the account as it was keeps its Graph token: the
/// next message needs no token request. One that changes the account
/// starts afresh.
#[tokio::test]
async fn a_reload_keeps_the_graph_token_of_an_unchanged_account() {
    let p = graph_proxy().await;
    let mut c = logged_in_plain(&p).await;
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    let redeemed = p.setup.tokens.state.requests("refresh_token");
    let p = p.reloaded(None).await;
    let mut c = logged_in_plain(&p).await;
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    assert_eq!(
        p.setup.tokens.state.requests("refresh_token"),
        redeemed,
        "the Graph token was asked for again after a reload"
    );

    // The account changes (its scopes): a new Graph token for the next
    // message.
    let changed = p
        .text
        .replace("\"offline_access\"]", "\"offline_access\", \"email\"]");
    assert_ne!(changed, p.text, "the account section is where expected");
    let p = p.reloaded(Some(changed)).await;
    let mut c = logged_in_plain(&p).await;
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    assert!(p.setup.tokens.state.requests("refresh_token") > redeemed);
}

/// The interop suite's stand-alone fake writes what Graph would deliver
/// (`save_dir`): a `sendMail`'s MIME, and a sent draft's MIME with its
/// attachments, reassembled from the upload ranges or decoded from the
/// `fileAttachment`, numbered on from the same counter.
#[tokio::test]
async fn the_fake_saves_a_sent_draft_with_its_attachments_in_order() {
    let p = graph_proxy().await;
    let dir = tempfile::tempdir().unwrap();
    *p.graph.state.save_dir.lock().unwrap() = Some(dir.path().to_owned());
    let mut c = logged_in_plain(&p).await;
    let (code, text) = send(&mut c, &["bob@example.test"], MESSAGE).await;
    assert_eq!(code, 250, "{text}");

    // Both cut out: the PDF's base64 first, then the PNG's is still over
    // 3 MiB. The PDF is over 3,000,000 bytes (an upload session), the PNG
    // under (a fileAttachment).
    let pdf = pdf_like(3_100_000, 11);
    let png = pdf_like(2_400_000, 12);
    let inline = format!(
        "--=_b\r\nContent-Type: image/png\r\nContent-ID: <chart@example.test>\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{}",
        base64_lines(&png)
    );
    let message = multipart(&[
        TEXT_PART,
        &attachment_part("scan.pdf", "application/pdf", &pdf),
        &inline,
    ]);
    let (code, text) = send(&mut c, &["bob@example.test"], &message).await;
    assert_eq!(code, 250, "{text}");
    let calls = p.graph.state.calls();
    assert_eq!(
        kinds(&calls),
        [
            "POST messages",
            "POST createUploadSession",
            "PUT upload",
            "PUT upload",
            "POST attachments",
            "POST send"
        ]
    );

    let file = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
    let json = |name: &str| serde_json::from_slice::<serde_json::Value>(&file(name)).unwrap();
    assert_eq!(file("1.eml"), MESSAGE);
    assert_eq!(file("2.eml"), multipart(&[TEXT_PART]));
    assert!(file("2.att-1") == pdf, "the PDF's ranges, in place");
    assert_eq!(
        json("2.att-1.json"),
        serde_json::json!({"name": "scan.pdf", "contentType": "application/pdf",
            "isInline": false, "contentId": null})
    );
    assert!(file("2.att-2") == png, "the PNG's contentBytes, decoded");
    assert_eq!(
        json("2.att-2.json"),
        serde_json::json!({"name": "attachment", "contentType": "image/png",
            "isInline": true, "contentId": "chart@example.test"})
    );
    let mut names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "1.eml",
            "2.att-1",
            "2.att-1.json",
            "2.att-2",
            "2.att-2.json",
            "2.eml"
        ]
    );
}

/// A large message's Graph token must outlive its whole exchange: one
/// fresh enough for a small message, but that would expire while the
/// attachments upload, is replaced before the draft is made.
#[tokio::test]
async fn a_large_message_takes_a_token_that_outlives_its_uploads() {
    let s = setup().await;
    // Past the 5-minute margin, short of a draft's 10 minutes.
    s.tokens.state.set_access_token_lifetime(400);
    let p = graph_proxy_with(s, "", "").await;
    let mut c = logged_in_plain(&p).await;
    let before = p.setup.tokens.state.requests("refresh_token");
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    assert_eq!(send(&mut c, &["bob@example.test"], MESSAGE).await.0, 250);
    let small = p.setup.tokens.state.requests("refresh_token");
    assert_eq!(small, before + 1, "one Graph token for two small messages");
    let pdf = pdf_like(3_300_000, 7);
    let message = multipart(&[
        TEXT_PART,
        &attachment_part("scan.pdf", "application/pdf", &pdf),
    ]);
    assert_eq!(send(&mut c, &["bob@example.test"], &message).await.0, 250);
    assert_eq!(
        p.setup.tokens.state.requests("refresh_token"),
        small + 1,
        "a longer-lived Graph token for the draft"
    );
}
