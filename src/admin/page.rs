//! The page itself: a pure function from what it shows to HTML, every
//! dynamic value escaped. No script, no external asset: one document with
//! inline styles, forms that post back to the page.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::auth::signin::MIN_PASSWORD_LEN;
use crate::auth::tokens::{AccountState, AccountStatus};
use crate::config::Flow;
use crate::escape::escape;
use crate::health::Seen;

/// Seconds between reloads of the page while a device code waits (a meta
/// refresh: no script needed).
pub(crate) const DEVICE_REFRESH_SECS: u64 = 5;

/// What the page shows.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// `http://localhost:8089/`.
    pub address: String,
    /// The CSRF token every form carries.
    pub csrf: String,
    pub accounts: Vec<AccountRow>,
    pub device: Vec<DevicePanel>,
    pub listeners: Vec<ListenerRow>,
    /// Client connections open now (all listeners).
    pub open_sessions: usize,
    /// Outcomes of recent sign-ins, newest first.
    pub notices: Vec<Notice>,
    /// The notifier's recent events, newest first (`health::Notices`).
    pub events: Vec<crate::health::Notice>,
}

#[derive(Debug, Clone)]
pub struct AccountRow {
    pub status: AccountStatus,
    /// The account has an authorize URL: a Sign in button.
    pub browser_sign_in: bool,
    /// The account has a device code URL: a device code button.
    pub device_sign_in: bool,
    /// The sign-in form asks for the local password (twice): the tokens
    /// are sealed with it (no `password_hash`).
    pub choose_password: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceState {
    /// Asked the provider for a code.
    Starting,
    /// The user should open `verification_uri` and enter `user_code`.
    Waiting {
        message: String,
        verification_uri: String,
        user_code: String,
    },
    Done,
    Failed(String),
}

#[derive(Debug, Clone)]
pub struct DevicePanel {
    pub account: String,
    pub state: DeviceState,
}

#[derive(Debug, Clone)]
pub struct ListenerRow {
    pub protocol: String,
    pub listen: SocketAddr,
    pub upstream: String,
    /// The connection security a mail client sets: "SSL/TLS", "STARTTLS" or "none".
    pub security: &'static str,
    /// Client connections open on it now.
    pub open: usize,
    /// How its upstream answered last, if a session reached for it yet.
    pub upstream_seen: Option<Seen>,
}

/// A listener's health cell: a style key and the words.
pub(crate) fn listener_health(row: &ListenerRow, now: SystemTime) -> (&'static str, String) {
    let open = match row.open {
        1 => "1 connection".to_owned(),
        n => format!("{n} connections"),
    };
    match &row.upstream_seen {
        None => (
            "ready",
            format!("listening, {open}; upstream not contacted yet"),
        ),
        Some(seen) => {
            let ago = human(now.duration_since(seen.at).unwrap_or_default());
            match &seen.error {
                None => (
                    "active",
                    format!("listening, {open}; upstream answered {ago} ago"),
                ),
                Some(e) => (
                    "failed",
                    format!("listening, {open}; upstream failed {ago} ago: {e}"),
                ),
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct Notice {
    pub account: String,
    pub ok: bool,
    pub text: String,
}

/// `2 h 5 min`, `59 min`, `45 s`.
pub(crate) fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// A short key (for `data-state`, and styles) and the text of a state.
pub(crate) fn state_text(state: &AccountState) -> (&'static str, String) {
    match state {
        AccountState::NeedsSignIn => ("needs-sign-in", "needs sign-in".into()),
        AccountState::Locked => (
            "locked",
            "signed in — locked until a client logs in with the password chosen at sign-in".into(),
        ),
        AccountState::Ready => ("ready", "signed in — ready".into()),
        AccountState::Active {
            expires_in: Some(d),
        } => ("active", format!("active — token expires in {}", human(*d))),
        AccountState::Active { expires_in: None } => ("active", "active".into()),
        AccountState::AppOnly {
            expires_in: Some(d),
        } => (
            "app-only",
            format!("app-only access — token expires in {}", human(*d)),
        ),
        AccountState::AppOnly { expires_in: None } => {
            ("app-only", "app-only access (no sign-in needed)".into())
        }
        AccountState::CatchAll => (
            "catch-all",
            "every address of this domain signs in on its own".into(),
        ),
        AccountState::Unreadable(reason) => (
            "unreadable",
            format!("the token file cannot be read: {reason}"),
        ),
    }
}

/// The account's configured `flow`, as its row names it.
fn flow_text(flow: Flow) -> &'static str {
    match flow {
        Flow::Auto => "flow: browser or device code, as the machine allows",
        Flow::AuthorizationCode => "flow: authorization code",
        Flow::Paste => "flow: authorization code, answer pasted back",
        Flow::DeviceCode => "flow: device code",
        Flow::ClientCredentials => "flow: client credentials",
    }
}

const STYLE: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:62em;\
padding:0 1em;color:#1d1d1f}h1{font-size:1.4em}h2{font-size:1.1em;margin-top:2em}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.45em .6em;\
border-bottom:1px solid #ddd;vertical-align:top}th{font-weight:600}\
.state{font-weight:600}.needs-sign-in,.unreadable,.failed{color:#b00020}\
.locked,.ready{color:#8a5a00}.active,.app-only,.done{color:#1b7f3b}\
.error{color:#b00020;font-size:.9em}form{display:inline;margin:0 .3em 0 0}\
button{font:inherit;padding:.2em .8em}input[type=email],input[type=password]{font:inherit;width:12em}\
.notice{padding:.5em .8em;margin:.4em 0;border-radius:4px;background:#eef7f0}\
.notice.bad{background:#fdecee}.code{font:1.3em monospace;letter-spacing:.1em}\
.muted{color:#666;font-size:.9em}";

/// The whole document.
pub(crate) fn render(page: &Page) -> String {
    let mut html = String::with_capacity(8192);
    html.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    if page
        .device
        .iter()
        .any(|d| matches!(d.state, DeviceState::Starting | DeviceState::Waiting { .. }))
    {
        let _ = write!(
            html,
            "<meta http-equiv=\"refresh\" content=\"{DEVICE_REFRESH_SECS}\">"
        );
    }
    let _ = write!(
        html,
        "<title>xoauth2-proxy</title><style>{STYLE}</style></head><body>\
         <h1>xoauth2-proxy</h1><p class=\"muted\">This page: {}</p>",
        escape(&page.address)
    );
    for n in &page.notices {
        let _ = write!(
            html,
            "<p class=\"notice{}\" data-account=\"{}\">{}: {}</p>",
            if n.ok { "" } else { " bad" },
            escape(&n.account),
            escape(&n.account),
            escape(&n.text)
        );
    }
    first_run(&mut html, page);
    accounts(&mut html, page);
    device(&mut html, page);
    listeners(&mut html, page);
    events(&mut html, page);
    client_settings(&mut html, page);
    html.push_str("</body></html>\n");
    html
}

/// What the notifier said lately (the same events `notify_command`, the
/// desktop or the Event Log got).
fn events(html: &mut String, page: &Page) {
    if page.events.is_empty() {
        return;
    }
    html.push_str("<h2>Recent notifications</h2><table><tr><th>when</th><th>event</th><th>about</th><th>message</th></tr>");
    let now = std::time::SystemTime::now();
    for e in &page.events {
        let ago = now.duration_since(e.at).unwrap_or_default();
        let _ = write!(
            html,
            "<tr class=\"event\" data-event=\"{event}\"><td>{ago} ago</td><td>{event}</td><td>{about}</td><td>{message}</td></tr>",
            ago = human(ago),
            event = escape(e.event),
            about = escape(&e.subject),
            message = escape(&e.message),
        );
    }
    html.push_str("</table>");
}

/// When no account is signed in yet: what to do first.
fn first_run(html: &mut String, page: &Page) {
    let signed_in = page.accounts.iter().any(|a| {
        !matches!(
            a.status.state,
            AccountState::NeedsSignIn | AccountState::CatchAll | AccountState::Unreadable(_)
        )
    });
    if signed_in {
        return;
    }
    html.push_str(
        "<p class=\"notice\" id=\"first-run\">First run: no account is signed in yet. \
         Sign your account in below (choose the local password your mail clients will use), \
         then set up the mail client with the settings at the bottom of this page, using \
         your address as the user name and that local password.</p>",
    );
}

/// Per listener, what to type into a mail client.
fn client_settings(html: &mut String, page: &Page) {
    html.push_str(
        "<h2>Mail client settings</h2><table><tr><th>protocol</th><th>server</th>\
         <th>port</th><th>security</th><th>user name</th></tr>",
    );
    for l in &page.listeners {
        let ip = l.listen.ip();
        let server = if ip.is_unspecified() {
            "this machine's address".to_owned()
        } else {
            ip.to_string()
        };
        let _ = write!(
            html,
            "<tr class=\"client-settings\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>your address</td></tr>",
            escape(&l.protocol.to_ascii_uppercase()),
            escape(&server),
            l.listen.port(),
            escape(l.security),
        );
    }
    html.push_str(
        "</table><p class=\"muted\">Authentication: normal password (the local password \
         chosen at the sign-in).</p>",
    );
}

fn accounts(html: &mut String, page: &Page) {
    html.push_str(
        "<h2>Accounts</h2><table><tr><th>account</th><th>state</th><th>sign-in</th></tr>",
    );
    if page.accounts.is_empty() {
        html.push_str("<tr><td colspan=\"3\">No account is configured.</td></tr>");
    }
    for row in &page.accounts {
        let s = &row.status;
        let (key, text) = state_text(&s.state);
        let _ = write!(
            html,
            "<tr data-account=\"{user}\" data-state=\"{key}\"><td>{user}<br>\
             <span class=\"muted\">{flow}</span></td><td><span class=\"state {key}\">{text}</span>",
            user = escape(&s.username),
            flow = flow_text(s.flow),
            text = escape(&text),
        );
        if let Some(e) = &s.last_error {
            let _ = write!(
                html,
                "<br><span class=\"error\">last error: {}</span>",
                escape(e)
            );
        }
        if let Some(wait) = s.retry_in {
            let _ = write!(
                html,
                "<br><span class=\"muted\">next try in {}</span>",
                human(wait)
            );
        }
        html.push_str("</td><td>");
        let catch_all = s.state == AccountState::CatchAll;
        let account_field = if catch_all {
            let domain = s.username.trim_start_matches('@');
            format!(
                "<input type=\"email\" name=\"account\" required placeholder=\"name@{}\" \
                 aria-label=\"address to sign in\">",
                escape(domain)
            )
        } else {
            format!(
                "<input type=\"hidden\" name=\"account\" value=\"{}\">",
                escape(&s.username)
            )
        };
        // One form for both ways of signing in (the code button posts it to
        // /device), so the password is typed once, beside the address.
        if row.browser_sign_in || row.device_sign_in {
            let password_fields = if row.choose_password {
                format!(
                    "<input type=\"password\" name=\"password\" required minlength=\"{MIN_PASSWORD_LEN}\" \
                     autocomplete=\"new-password\" placeholder=\"local password\" \
                     aria-label=\"local password for your mail client\">\
                     <input type=\"password\" name=\"password2\" required minlength=\"{MIN_PASSWORD_LEN}\" \
                     autocomplete=\"new-password\" placeholder=\"again\" \
                     aria-label=\"the local password again\">"
                )
            } else {
                String::new()
            };
            let action = if row.browser_sign_in {
                "/signin"
            } else {
                "/device"
            };
            let _ = write!(
                html,
                "<form method=\"post\" action=\"{action}\">{}{account_field}{password_fields}",
                csrf_field(&page.csrf)
            );
            if row.browser_sign_in {
                html.push_str("<button type=\"submit\">Sign in</button>");
            }
            if row.device_sign_in {
                html.push_str(
                    "<button type=\"submit\" formaction=\"/device\">Sign in with a code</button>",
                );
            }
            html.push_str("</form>");
            if row.choose_password {
                html.push_str(
                    "<br><span class=\"muted\">The password you choose here seals the tokens; \
                     your mail client logs in with it.</span>",
                );
            }
        }
        if !row.browser_sign_in && !row.device_sign_in {
            html.push_str("<span class=\"muted\">none needed</span>");
        }
        html.push_str("</td></tr>");
    }
    html.push_str("</table>");
}

fn csrf_field(csrf: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        escape(csrf)
    )
}

fn device(html: &mut String, page: &Page) {
    if page.device.is_empty() {
        return;
    }
    html.push_str("<h2>Device code sign-in</h2>");
    for panel in &page.device {
        let account = escape(&panel.account);
        let _ = write!(html, "<div class=\"device\" data-account=\"{account}\"><p>");
        match &panel.state {
            DeviceState::Starting => {
                let _ = write!(html, "{account}: asking for a code…");
            }
            DeviceState::Waiting {
                message,
                verification_uri,
                user_code,
            } => {
                let link = if is_web_url(verification_uri) {
                    format!(
                        "<a href=\"{u}\" rel=\"noreferrer\" target=\"_blank\">{u}</a>",
                        u = escape(verification_uri)
                    )
                } else {
                    escape(verification_uri)
                };
                let _ = write!(
                    html,
                    "{account}: open {link} and enter the code <span class=\"code\">{}</span>\
                     <br><span class=\"muted\">{}</span><br><span class=\"muted\">waiting for \
                     the sign-in; this page reloads itself</span>",
                    escape(user_code),
                    escape(message)
                );
            }
            DeviceState::Done => {
                let _ = write!(
                    html,
                    "<span class=\"done\">{account}: signed in with the code.</span>"
                );
            }
            DeviceState::Failed(reason) => {
                let _ = write!(
                    html,
                    "<span class=\"failed\">{account}: the code sign-in failed: {}</span>",
                    escape(reason)
                );
            }
        }
        html.push_str("</p></div>");
    }
}

/// Only http(s) links become links (a provider's `javascript:` would not).
fn is_web_url(url: &str) -> bool {
    let lower = url.to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

fn listeners(html: &mut String, page: &Page) {
    let _ = write!(
        html,
        "<h2>Listeners</h2><p class=\"muted\">{} client connection{} open</p><table>\
         <tr><th>protocol</th><th>listening on</th><th>upstream</th><th>health</th></tr>",
        page.open_sessions,
        if page.open_sessions == 1 { "" } else { "s" }
    );
    let now = SystemTime::now();
    for l in &page.listeners {
        let (class, health) = listener_health(l, now);
        let _ = write!(
            html,
            "<tr class=\"listener\"><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"{class}\">{}</td></tr>",
            escape(&l.protocol),
            escape(&l.listen.to_string()),
            escape(&l.upstream),
            escape(&health)
        );
    }
    html.push_str("</table>");
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "<script>alert(1)</script>\"'&x=\"><img src=x onerror=alert(2)>";

    fn status(username: &str, state: AccountState) -> AccountStatus {
        AccountStatus {
            username: username.into(),
            flow: Flow::DeviceCode,
            state,
            last_error: None,
            retry_in: None,
        }
    }

    fn row(status: AccountStatus) -> AccountRow {
        AccountRow {
            status,
            browser_sign_in: true,
            device_sign_in: true,
            choose_password: true,
        }
    }

    /// The page with `v` in every dynamic value.
    fn page_with(v: &str) -> Page {
        let mut with_error = status(v, AccountState::Unreadable(v.into()));
        with_error.last_error = Some(v.into());
        Page {
            address: format!("http://localhost:8089/{v}"),
            csrf: v.into(),
            accounts: vec![
                row(with_error),
                row(status(&format!("@{v}"), AccountState::CatchAll)),
            ],
            device: vec![
                DevicePanel {
                    account: v.into(),
                    state: DeviceState::Waiting {
                        message: v.into(),
                        verification_uri: format!("javascript:{v}"),
                        user_code: v.into(),
                    },
                },
                DevicePanel {
                    account: v.into(),
                    state: DeviceState::Failed(v.into()),
                },
            ],
            listeners: vec![ListenerRow {
                protocol: v.into(),
                listen: "127.0.0.1:1993".parse().unwrap(),
                upstream: v.into(),
                security: "STARTTLS",
                open: 1,
                upstream_seen: Some(Seen {
                    failing_since: None,
                    at: SystemTime::now(),
                    error: Some(v.into()),
                }),
            }],
            open_sessions: 1,
            notices: vec![Notice {
                account: v.into(),
                ok: false,
                text: v.into(),
            }],
            events: vec![crate::health::Notice {
                at: SystemTime::now(),
                event: "sign_in_needed",
                subject: v.into(),
                message: v.into(),
            }],
        }
    }

    #[test]
    fn client_settings_per_listener_and_the_first_run_hint() {
        let listener = |protocol: &str, listen: &str, security| ListenerRow {
            protocol: protocol.into(),
            listen: listen.parse().unwrap(),
            upstream: "outlook.office365.com:993".into(),
            security,
            open: 0,
            upstream_seen: None,
        };
        let mut page = Page {
            accounts: vec![row(status("a@example.com", AccountState::NeedsSignIn))],
            listeners: vec![
                listener("imap", "127.0.0.1:1143", "none"),
                listener("smtp", "0.0.0.0:1465", "SSL/TLS"),
            ],
            ..Page::default()
        };
        let html = render(&page);
        assert!(html.contains(
            "<td>IMAP</td><td>127.0.0.1</td><td>1143</td><td>none</td><td>your address</td>"
        ));
        assert!(html.contains(
            "<td>SMTP</td><td>this machine&#39;s address</td><td>1465</td><td>SSL/TLS</td>"
        ));
        assert!(html.contains("id=\"first-run\""), "{html}");
        page.accounts = vec![row(status("a@example.com", AccountState::Locked))];
        assert!(!render(&page).contains("id=\"first-run\""));
    }

    #[test]
    fn hostile_values_are_escaped_everywhere() {
        let html = render(&page_with(HOSTILE));
        let benign = render(&page_with("x"));
        // The markup is the same as with a harmless value: no tag, quote or
        // attribute comes from the data.
        for c in ['<', '>', '"', '\''] {
            assert_eq!(
                html.matches(c).count(),
                benign.matches(c).count(),
                "{c} in {html}"
            );
        }
        assert!(!html.contains("<script") && !html.contains("<img"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(
            !html.contains("href=\"javascript"),
            "only http(s) links are links"
        );
    }

    #[test]
    fn each_state_reads_as_it_should() {
        let cases = [
            (AccountState::NeedsSignIn, "needs-sign-in", "needs sign-in"),
            (
                AccountState::Locked,
                "locked",
                "signed in — locked until a client logs in with the password chosen at sign-in",
            ),
            (AccountState::Ready, "ready", "signed in — ready"),
            (
                AccountState::Active {
                    expires_in: Some(Duration::from_secs(3599)),
                },
                "active",
                "active — token expires in 59 min",
            ),
            (
                AccountState::AppOnly { expires_in: None },
                "app-only",
                "app-only access",
            ),
            (AccountState::CatchAll, "catch-all", "signs in on its own"),
        ];
        for (state, key, text) in cases {
            let (k, t) = state_text(&state);
            assert_eq!(k, key);
            assert!(t.contains(text), "{t}");
            let html = render(&Page {
                accounts: vec![row(status("a@b.test", state))],
                ..Page::default()
            });
            assert!(html.contains(&format!("data-state=\"{key}\"")), "{html}");
        }
    }

    #[test]
    fn forms_carry_the_csrf_token_and_the_account() {
        let html = render(&Page {
            csrf: "tok".into(),
            accounts: vec![
                row(status("a@b.test", AccountState::NeedsSignIn)),
                row(status("@b.test", AccountState::CatchAll)),
            ],
            ..Page::default()
        });
        // One form per row: both buttons post it (the code one to /device).
        assert_eq!(html.matches("name=\"csrf\" value=\"tok\"").count(), 2);
        assert!(html.contains("name=\"account\" value=\"a@b.test\""));
        assert!(
            html.contains("type=\"email\" name=\"account\" required placeholder=\"name@b.test\"")
        );
        assert!(html.contains("action=\"/signin\"") && html.contains("formaction=\"/device\""));
        // The local password is chosen here, typed twice, never filled in.
        assert_eq!(
            html.matches("type=\"password\" name=\"password\" required")
                .count(),
            2
        );
        assert_eq!(
            html.matches("type=\"password\" name=\"password2\" required")
                .count(),
            2
        );
        assert!(html.contains(&format!("minlength=\"{MIN_PASSWORD_LEN}\"")));
        assert!(!html.contains("type=\"password\" name=\"password\" value"));
        let unattended = render(&Page {
            accounts: vec![AccountRow {
                choose_password: false,
                ..row(status("scanner@b.test", AccountState::NeedsSignIn))
            }],
            ..Page::default()
        });
        assert!(
            !unattended.contains("type=\"password\""),
            "password_hash: none asked"
        );
        assert!(!html.contains("http-equiv=\"refresh\""));
        assert!(!html.contains("<script") && !html.contains(" src="));
    }

    #[test]
    fn a_waiting_device_code_refreshes_the_page() {
        let html = render(&Page {
            device: vec![DevicePanel {
                account: "a@b.test".into(),
                state: DeviceState::Waiting {
                    message: "m".into(),
                    verification_uri: "https://microsoft.com/devicelogin".into(),
                    user_code: "FAKE0001".into(),
                },
            }],
            ..Page::default()
        });
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(html.contains("href=\"https://microsoft.com/devicelogin\""));
        assert!(html.contains("FAKE0001"));
    }

    #[test]
    fn listener_health_says_connections_and_the_upstream_outcome() {
        let now = SystemTime::now();
        let row = |open, seen: Option<(u64, Option<&str>)>| ListenerRow {
            protocol: "imap".into(),
            listen: "127.0.0.1:1143".parse().unwrap(),
            upstream: "outlook.office365.com:993".into(),
            security: "none",
            open,
            upstream_seen: seen.map(|(ago, e)| Seen {
                failing_since: None,
                at: now - Duration::from_secs(ago),
                error: e.map(str::to_owned),
            }),
        };
        let table = [
            (
                row(0, None),
                "ready",
                "listening, 0 connections; upstream not contacted yet",
            ),
            (
                row(1, Some((5, None))),
                "active",
                "listening, 1 connection; upstream answered 5 s ago",
            ),
            (
                row(3, Some((120, Some("connection refused")))),
                "failed",
                "listening, 3 connections; upstream failed 2 min ago: connection refused",
            ),
        ];
        for (row, class, text) in table {
            assert_eq!(listener_health(&row, now), (class, text.to_owned()));
        }
        // A clock that went back shows "0 s", not a panic.
        let future = ListenerRow {
            upstream_seen: Some(Seen {
                failing_since: None,
                at: now + Duration::from_secs(60),
                error: None,
            }),
            ..row(0, None)
        };
        assert_eq!(listener_health(&future, now).0, "active");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(human(Duration::from_secs(45)), "45 s");
        assert_eq!(human(Duration::from_secs(60)), "1 min");
        assert_eq!(human(Duration::from_secs(3600 + 5 * 60)), "1 h 5 min");
    }
}
