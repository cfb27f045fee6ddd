//! Log lines written to a pipe (a service manager, `2> file`, `| tee`)
//! carry no ANSI colour codes, and with `log_format = "json"` each is one
//! JSON object: the binary is run with stderr piped.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long the proxy may take to start and say it listens.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs the proxy (with `proxy_extra` in `[proxy]` and `args` before `run`)
/// until a line says `listening` (or the time is up), then stops it.
/// Returns whether it said so, and the stderr lines up to there.
fn stderr_until_listening(proxy_extra: &str, args: &[&str]) -> (bool, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("proxy.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nstate_dir = {:?}\nadmin_listen = \"off\"\n{proxy_extra}\n\
             [[listener]]\nprotocol = \"imap\"\nlisten = \"127.0.0.1:0\"\n\
             upstream = \"127.0.0.1:9\"\nupstream_tls = \"implicit\"\n",
            dir.path().join("state").display().to_string()
        ),
    )
    .expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .args(["--config", config.to_str().expect("utf-8 path")])
        .args(args)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the proxy");
    let stderr = child.stderr.take().expect("piped stderr");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).split(b'\n') {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + START_TIMEOUT;
    let mut seen = Vec::new();
    let listening = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = String::from_utf8_lossy(&line).contains("listening");
                seen.push(line);
                if found {
                    break true;
                }
            }
            Err(_) => break false,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    (listening, seen)
}

fn text(lines: &[Vec<u8>]) -> Vec<String> {
    lines
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect()
}

#[test]
fn piped_stderr_gets_no_colour_codes() {
    let (listening, seen) = stderr_until_listening("", &[]);
    let text = text(&seen);
    assert!(listening, "no `listening` line: {text:#?}");
    assert!(
        seen.iter().all(|l| !l.contains(&0x1b)),
        "colour codes in piped stderr: {text:#?}"
    );
}

#[test]
fn json_log_lines_are_one_object_each_with_the_fields() {
    for (extra, args) in [
        (
            "log_format = \"json\"\nmetrics_listen = \"127.0.0.1:0\"",
            &[][..],
        ),
        ("log_format = \"text\"", &["--log-format", "json"][..]),
    ] {
        let (listening, seen) = stderr_until_listening(extra, args);
        let text = text(&seen);
        assert!(listening, "no `listening` line: {text:#?}");
        let mut listened = false;
        for line in &text {
            let object: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            for field in ["timestamp", "level", "target", "message"] {
                assert!(object.get(field).is_some(), "no {field} in {line}");
            }
            if object["message"] == "listening" {
                assert_eq!(object["protocol"], "imap", "{line}");
                assert!(
                    object["listen"]
                        .as_str()
                        .is_some_and(|l| l.starts_with("127.0.0.1:")),
                    "{line}"
                );
                assert_eq!(object["level"], "INFO", "{line}");
                listened = true;
            }
        }
        assert!(listened, "no JSON `listening` line: {text:#?}");
    }
}
