//! What the command line says of itself: `--version` names the version and
//! the git commit (build.rs); an error names its cause once.

use std::process::Command;

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--version")
        .output()
        .expect("run xoauth2-proxy --version");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    // What build.rs saw: git's short hash of HEAD, or "unknown" without git.
    let commit = Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        text.trim_end(),
        format!(
            "xoauth2-proxy {} (commit {commit})",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn an_error_names_its_cause_once() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let missing = dir.path().join("proxy.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_xoauth2-proxy"))
        .arg("--config")
        .arg(&missing)
        .arg("check-config")
        .output()
        .expect("run xoauth2-proxy check-config");
    assert!(!out.status.success());
    let text = String::from_utf8(out.stderr).expect("utf-8");
    let os_text = std::fs::read(&missing).unwrap_err().to_string();
    assert_eq!(
        text.trim_end(),
        format!("error: cannot read {}: {os_text}", missing.display())
    );
}
