//! `notify_command`: the program run for each notification, with the event
//! in its environment. No shell: the configured words are the program and
//! its arguments. Its standard input is empty, its output read (up to
//! [`MAX_OUTPUT_BYTES`]) into one log line, and it is killed after the
//! timeout. Whatever it does, the proxy goes on.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::derive::Notice;

/// The most of the program's output (stdout and stderr each) kept for the
/// log line: enough for an error message, not a log of its own.
pub(crate) const MAX_OUTPUT_BYTES: u64 = 512;

/// The environment of one run: `XP_EVENT`, `XP_ACCOUNT`, `XP_LISTENER`,
/// `XP_MESSAGE`, `XP_PAGE_URL`.
pub(crate) fn environment(notice: &Notice, page_url: &str) -> [(&'static str, String); 5] {
    [
        ("XP_EVENT", notice.event.name().to_owned()),
        ("XP_ACCOUNT", notice.subject.account().to_owned()),
        ("XP_LISTENER", notice.subject.listener().to_owned()),
        ("XP_MESSAGE", notice.message.clone()),
        ("XP_PAGE_URL", page_url.to_owned()),
    ]
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Exit status 0.
    Done,
    /// It could not start, exited non-zero or died (the reason, escaped output included).
    Failed(String),
    /// Still running after the timeout: killed.
    Killed,
}

/// Runs `command` for `notice`, waits at most `timeout`.
pub(crate) async fn run(
    command: &[String],
    notice: &Notice,
    page_url: &str,
    timeout: Duration,
) -> Outcome {
    let Some((program, args)) = command.split_first() else {
        return Outcome::Failed("no program configured".into());
    };
    let mut child = match Command::new(program)
        .args(args)
        .envs(environment(notice, page_url))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Dropped at the timeout (or a shutdown): killed, not left behind.
        .kill_on_drop(true)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Outcome::Failed(format!("cannot start {program}: {e}")),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let finished = async {
        let (out, err, status) = tokio::join!(capped(stdout), capped(stderr), child.wait());
        (out, err, status)
    };
    let finished = tokio::time::timeout(timeout, finished).await;
    match finished {
        Err(_) => {
            // `child` is dropped with the future's borrow ended: kill now and
            // reap, so no process outlives its timeout.
            let _ = child.start_kill();
            let _ = child.wait().await;
            Outcome::Killed
        }
        Ok((_, _, Err(e))) => Outcome::Failed(format!("{program}: {e}")),
        Ok((_, _, Ok(status))) if status.success() => Outcome::Done,
        Ok((out, err, Ok(status))) => {
            let said = [out, err]
                .iter()
                .map(|b| crate::escape::log_text(String::from_utf8_lossy(b).trim()).to_string())
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" / ");
            Outcome::Failed(format!("{program} ended with {status}: {said}"))
        }
    }
}

/// Reads up to [`MAX_OUTPUT_BYTES`], then drains the rest unread, so a
/// chatty program neither fills memory nor blocks on a full pipe.
async fn capped(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let Some(mut pipe) = pipe else {
        return Vec::new();
    };
    let mut kept = Vec::new();
    let _ = (&mut pipe)
        .take(MAX_OUTPUT_BYTES)
        .read_to_end(&mut kept)
        .await;
    let _ = tokio::io::copy(&mut pipe, &mut tokio::io::sink()).await;
    kept
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::notify::derive::{EventKind, Subject};

    fn notice() -> Notice {
        Notice {
            event: EventKind::SignInNeeded,
            subject: Subject::Account("alice@contoso.com".into()),
            message: "alice@contoso.com must sign in again".into(),
        }
    }

    fn script(dir: &std::path::Path, body: &str) -> Vec<String> {
        let path = dir.join("p.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700)).unwrap();
        vec![path.display().to_string()]
    }

    #[test]
    fn the_environment_names_the_event() {
        let env = environment(&notice(), "http://localhost:8089/");
        assert_eq!(
            env.map(|(k, v)| format!("{k}={v}")),
            [
                "XP_EVENT=sign_in_needed",
                "XP_ACCOUNT=alice@contoso.com",
                "XP_LISTENER=",
                "XP_MESSAGE=alice@contoso.com must sign in again",
                "XP_PAGE_URL=http://localhost:8089/",
            ]
        );
    }

    #[tokio::test]
    async fn outcomes_of_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let second = Duration::from_secs(10);
        let out = dir.path().join("out");
        let ok = script(
            dir.path(),
            &format!(
                "read -r line; echo \"[$line] $1 $XP_EVENT\" > {}",
                out.display()
            ),
        );
        let mut with_arg = ok.clone();
        with_arg.push("arg one".into());
        assert_eq!(run(&with_arg, &notice(), "", second).await, Outcome::Done);
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "[] arg one sign_in_needed\n",
            "stdin is empty, arguments are words, the event is in the environment"
        );

        let failing = script(dir.path(), "printf 'no route\\033[31m\\n' >&2; exit 3");
        match run(&failing, &notice(), "", second).await {
            Outcome::Failed(why) => {
                assert!(why.contains("no route"), "{why}");
                assert!(!why.contains('\u{1b}'), "escaped: {why:?}");
            }
            other => panic!("{other:?}"),
        }

        let chatty = script(dir.path(), "yes 0123456789 | head -c 1000000; exit 1");
        match run(&chatty, &notice(), "", second).await {
            Outcome::Failed(why) => assert!(why.len() < 2 * MAX_OUTPUT_BYTES as usize + 200),
            other => panic!("{other:?}"),
        }

        let hanging = script(dir.path(), "exec sleep 600");
        let started = std::time::Instant::now();
        assert_eq!(
            run(&hanging, &notice(), "", Duration::from_millis(200)).await,
            Outcome::Killed
        );
        assert!(started.elapsed() < Duration::from_secs(5));

        let missing = vec!["/nonexistent/notify".to_owned()];
        assert!(matches!(
            run(&missing, &notice(), "", second).await,
            Outcome::Failed(why) if why.contains("cannot start")
        ));
    }
}
