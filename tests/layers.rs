//! The layer rule of ARCHITECTURE.md, checked: a module of `src/` uses only
//! modules of lower layers (and its own). Test code (after `#[cfg(test)]`,
//! and sibling test files) may reach anywhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Layers, bottom first; the same table as ARCHITECTURE.md's "Layers".
const LAYERS: &[&[&str]] = &[
    &["config", "fs_secure"],
    &[
        "sasl", "tls", "health", "drain", "logging", "control", "escape", "store", "net",
    ],
    &["protocol"],
    &["auth", "upstream", "relay"],
    &["backend", "session"],
    &["listener"],
    &["admin", "doctor", "init", "service", "metrics", "notify"],
];

/// Uses that break the rule on purpose, each with its reason.
const EXCEPTIONS: &[(&str, &str, &str)] = &[(
    "config",
    "auth",
    "a configured client certificate is loaded once while the file is checked \
     (auth::assertion), so `check-config` names the key of a bad one",
)];

/// `lib.rs`, `main.rs` and the services (which run the whole proxy, as
/// `main` does) sit above every layer; so do the binary's own modules
/// ([`BINARY_ONLY`]), which are `main.rs` split by subcommand.
const TOP: &[&str] = &["lib", "main", "service", "cli"];

/// Folders of `src/` that only `main.rs` declares: the binary's modules,
/// which see the library as `xoauth2_proxy::…` (never `crate::`). The
/// library must not declare them, or its own code there would escape the
/// layer rule as part of the top.
const BINARY_ONLY: &[&str] = &["cli"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/auth/tokens/mod.rs` → `auth`).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_owned()
}

fn is_test_file(file: &Path) -> bool {
    let name = file.file_name().unwrap().to_string_lossy();
    name == "tests.rs" || name.ends_with("_tests.rs")
}

/// `crate::x` paths in the production code of `text` (comments and test
/// modules skipped).
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("#[cfg(test)]") {
            break;
        }
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `xoauth2_proxy::…` in doc examples is not `crate::`; `$crate` is a macro's.
            let before = &rest[..at];
            if !before.ends_with('$') && !before.ends_with('_') && !name.is_empty() {
                found.insert(name);
            }
            rest = after;
        }
    }
    found
}

#[test]
fn every_module_uses_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    files.sort();
    let mut broken = Vec::new();
    for file in &files {
        if is_test_file(file) {
            continue;
        }
        let module = module_of(&src, file);
        if TOP.contains(&module.as_str()) {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            broken.push(format!(
                "{}: module `{module}` is in no layer; add it to LAYERS here and in ARCHITECTURE.md",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in uses(&text) {
            if used == module
                || EXCEPTIONS
                    .iter()
                    .any(|(from, to, _)| *from == module && *to == used)
            {
                continue;
            }
            let allowed = match layer_of(&used) {
                Some(layer) => layer < own,
                // Items of lib.rs itself (re-exports, `run`) are above everything.
                None => false,
            };
            if !allowed {
                broken.push(format!(
                    "{}: `{module}` (layer {own}) uses `crate::{used}` (layer {:?})",
                    file.display(),
                    layer_of(&used)
                ));
            }
        }
    }
    assert!(
        broken.is_empty(),
        "layer rule broken:\n{}",
        broken.join("\n")
    );
}

#[test]
fn binary_only_modules_are_not_the_librarys() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let main = std::fs::read_to_string(src.join("main.rs")).unwrap();
    let declares = |text: &str, name: &str| {
        text.lines().any(|line| {
            let code = line.trim_start();
            let code = code.strip_prefix("pub(crate) ").unwrap_or(code);
            let code = code.strip_prefix("pub ").unwrap_or(code);
            code == format!("mod {name};")
        })
    };
    for name in BINARY_ONLY {
        assert!(TOP.contains(name), "`{name}` is binary-only but not in TOP");
        assert!(
            !declares(&lib, name),
            "lib.rs declares `{name}`, a module of the binary"
        );
        assert!(declares(&main, name), "main.rs does not declare `{name}`");
    }
}

#[test]
fn the_scanner_sees_paths_and_skips_comments_and_tests() {
    let text = "use crate::config::Config;\n// crate::admin is mentioned\n\
                let x = crate::sasl::decode(b);\n#[cfg(test)]\nmod tests { use crate::admin; }\n";
    let found: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(found, ["config", "sasl"]);
}
