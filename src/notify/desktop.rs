//! A desktop notification when no `notify_command` is set: notify-rust
//! (the freedesktop notification service over the session D-Bus, through
//! zbus, on Linux and the BSDs; the notification centre on macOS; a toast
//! on Windows, for a run in the user's session: the service writes to the
//! Event Log instead). Without a desktop session (a system service, a
//! server, a container) it is skipped with a debug line: the log and the
//! page have the event anyway.

use super::derive::Notice;

#[cfg(feature = "desktop")]
/// Whether this process can reach a desktop: on Linux and the BSDs a
/// session bus (`DBUS_SESSION_BUS_ADDRESS`, or the per-user bus socket
/// systemd makes in `XDG_RUNTIME_DIR`); on macOS and Windows the
/// notification centre answers or fails.
pub(crate) fn session_available() -> bool {
    #[cfg(all(unix, not(target_os = "macos")))]
    {
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some_and(|a| !a.is_empty())
            || std::env::var_os("XDG_RUNTIME_DIR")
                .is_some_and(|dir| std::path::Path::new(&dir).join("bus").exists())
    }
    #[cfg(not(all(unix, not(target_os = "macos"))))]
    {
        true
    }
}

#[cfg(feature = "desktop")]
/// Title and body of the desktop notification.
pub(crate) fn text(notice: &Notice, page_url: &str) -> (String, String) {
    let title = format!("xoauth2-proxy: {}", notice.event.name().replace('_', " "));
    let body = match page_url.is_empty() {
        true => notice.message.clone(),
        false => format!("{}\n{page_url}", notice.message),
    };
    (title, body)
}

/// Shows `notice` on the desktop (on a blocking thread: notify-rust's call
/// waits for the bus). Failures are debug lines.
#[cfg(feature = "desktop")]
pub(crate) async fn show(notice: &Notice, page_url: &str) {
    if !session_available() {
        tracing::debug!(
            event = notice.event.name(),
            "no desktop session: no desktop notification"
        );
        return;
    }
    let (title, body) = text(notice, page_url);
    let shown = tokio::task::spawn_blocking(move || {
        notify_rust::Notification::new()
            .appname("xoauth2-proxy")
            .summary(&title)
            .body(&body)
            .show()
            .map(|_| ())
            .map_err(|e| e.to_string())
    });
    match tokio::time::timeout(super::DESKTOP_TIMEOUT, shown).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::debug!(error = %e, "cannot show a desktop notification"),
        Ok(Err(e)) => tracing::debug!(error = %e, "desktop notification task failed"),
        Err(_) => tracing::debug!("the desktop notification service did not answer in time"),
    }
}

#[cfg(not(feature = "desktop"))]
pub(crate) async fn show(notice: &Notice, _page_url: &str) {
    tracing::debug!(
        event = notice.event.name(),
        "built without desktop notifications"
    );
}

#[cfg(all(test, feature = "desktop"))]
mod tests {
    use super::*;
    use crate::notify::derive::{EventKind, Subject};

    #[test]
    fn the_title_names_the_event_and_the_body_the_page() {
        let notice = Notice {
            event: EventKind::SignInNeeded,
            subject: Subject::Account("alice@contoso.com".into()),
            message: "alice@contoso.com must sign in again".into(),
        };
        let (title, body) = text(&notice, "http://localhost:8089/");
        assert_eq!(title, "xoauth2-proxy: sign in needed");
        assert_eq!(
            body,
            "alice@contoso.com must sign in again\nhttp://localhost:8089/"
        );
        assert_eq!(text(&notice, "").1, notice.message);
    }
}
