//! Where log lines go: stderr on a terminal; under a service manager
//! (`--log-dir` or `log_dir`, which the service definitions set) daily
//! files `xoauth2-proxy.YYYY-MM-DD.log`, the oldest removed beyond a count.
//! Either as text or (`log_format = "json"`) one JSON object per line.

use std::io::IsTerminal;
use std::path::Path;

use tracing_appender::rolling::{Builder, RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;

pub use crate::config::LogFormat;

/// The name of the daily log files: `<prefix>.<date>.<suffix>`.
pub(crate) const FILE_PREFIX: &str = "xoauth2-proxy";
pub(crate) const FILE_SUFFIX: &str = "log";

/// `RUST_LOG` when set, else `default` (a level or a directive).
pub fn filter(default: &str) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default))
        .unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Log lines to stderr, coloured only on a terminal: redirected to a file,
/// a pipe or a service manager's journal, escape codes are noise in every
/// line (and break `grep` on the level).
pub fn to_stderr(default: &str) {
    to_stderr_as(default, LogFormat::Text)
}

/// [`to_stderr`] in `format`: `Json` is one JSON object per line (never coloured).
pub fn to_stderr_as(default: &str, format: LogFormat) {
    let lines = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => lines.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => lines.json().flatten_event(true).try_init(),
    };
}

/// Daily-rotated files in `dir` (created if missing, and made owner-only:
/// log lines name accounts and client addresses), keeping `keep` files.
pub(crate) fn daily_files(dir: &Path, keep: usize) -> anyhow::Result<RollingFileAppender> {
    crate::fs_secure::private_dir(dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create the log directory {} (owner-only): {e}",
            dir.display()
        )
    })?;
    Builder::new()
        .rotation(Rotation::DAILY)
        .filename_prefix(FILE_PREFIX)
        .filename_suffix(FILE_SUFFIX)
        .max_log_files(keep.max(1))
        .build(dir)
        .map_err(|e| anyhow::anyhow!("cannot open a log file in {}: {e}", dir.display()))
}

/// Log lines to daily files in `dir` (see [`daily_files`]).
pub fn to_files(default: &str, dir: &Path, keep: usize) -> anyhow::Result<()> {
    to_files_as(default, dir, keep, LogFormat::Text)
}

/// [`to_files`] in `format`.
pub fn to_files_as(
    default: &str,
    dir: &Path,
    keep: usize,
    format: LogFormat,
) -> anyhow::Result<()> {
    let files = daily_files(dir, keep)?;
    let lines = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_ansi(false)
        .with_writer(files);
    let _ = match format {
        LogFormat::Text => lines.try_init(),
        LogFormat::Json => lines.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// An error and its causes on one line, each said once. Types that name
/// their cause in their own message (`"cannot save the tokens: {0}"` over a
/// `#[from]` error) also return it as `source()`, and `{:#}` would print it
/// twice; a cause the text so far already ends with is skipped.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut next = error.source();
    while let Some(cause) = next {
        let said = cause.to_string();
        if !text.ends_with(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_go_to_a_dated_file_in_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let logs = dir.path().join("logs");
        let files = daily_files(&logs, 3).unwrap();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(files)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(listen = "127.0.0.1:1143", "listening");
        });
        let names: Vec<String> = std::fs::read_dir(&logs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let name = &names[0];
        let date = name
            .strip_prefix("xoauth2-proxy.")
            .and_then(|n| n.strip_suffix(".log"))
            .unwrap_or_else(|| panic!("unexpected file name {name}"));
        assert_eq!(date.len(), "2026-01-31".len(), "{name}");
        let text = std::fs::read_to_string(logs.join(name)).unwrap();
        assert!(text.contains("listening"), "{text}");
        assert!(!text.contains('\u{1b}'), "colour codes in a file: {text:?}");
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot save the tokens: {0}")]
        Store(#[from] std::io::Error),
        #[error("the sign-in failed")]
        Wrapped(#[source] std::io::Error),
    }

    #[test]
    fn a_cause_the_message_names_is_said_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let said = error_chain(&Outer::from(io()));
        assert_eq!(said, "cannot save the tokens: no such file");
        let said = error_chain(&Outer::Wrapped(io()));
        assert_eq!(said, "the sign-in failed: no such file");
        let chained = anyhow::Error::from(Outer::from(io())).context("authorize");
        let said = error_chain(chained.as_ref());
        assert_eq!(said, "authorize: cannot save the tokens: no such file");
    }
}
