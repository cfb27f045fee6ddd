//! Puts the git commit into `xoauth2-proxy --version`: `XOAUTH2_PROXY_COMMIT`
//! is the short hash of HEAD, or "unknown" where there is no git (a build
//! from a source tarball, `cargo install` from a registry).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=XOAUTH2_PROXY_COMMIT={commit}");
    // Rebuilt when HEAD moves: HEAD itself (a checkout), the branch it points
    // at (a commit) and packed-refs (a gc). `--git-path` finds them in a
    // worktree as well as in a plain clone.
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        // Only files that exist: cargo treats a missing one as always
        // changed and would rebuild (and relink) on every build.
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
