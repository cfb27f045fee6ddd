use super::*;

fn tokens(rt: &str) -> StoredTokens {
    StoredTokens {
        refresh_token: Some(SecretString::from(rt.to_owned())),
        access_token: Some(SecretString::from(format!("at-for-{rt}"))),
        expires_at: Some(1_900_000_000),
    }
}

#[test]
fn crash_leftovers_are_swept_but_fresh_temp_files_and_tokens_stay() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    assert_eq!(store.sweep_temp_files(), 0, "no directory yet");
    store.save("a@x.test", &StoredTokens::default()).unwrap();
    let old = store.dir().join("a@x.test.tmp.999.0");
    let fresh = store.dir().join("a@x.test.tmp.999.1");
    fs::write(&old, b"half").unwrap();
    fs::write(&fresh, b"half").unwrap();
    let long_ago = std::time::SystemTime::now() - STALE_TEMP_AGE * 2;
    fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(long_ago)
        .unwrap();
    assert_eq!(store.sweep_temp_files(), 1);
    assert!(!old.exists() && fresh.exists());
    assert!(store.load("a@x.test").unwrap().is_some());
}

#[test]
fn save_load_replace_remove() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    assert!(store.load("alice@contoso.com").unwrap().is_none());
    store.save("alice@contoso.com", &tokens("rt-1")).unwrap();
    store.save("Alice@Contoso.com", &tokens("rt-2")).unwrap();
    let t = store.load("alice@contoso.com").unwrap().unwrap();
    assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt-2");
    assert_eq!(t.expires_at, Some(1_900_000_000));
    let leftovers: Vec<_> = fs::read_dir(store.dir()).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "no temp files are left behind");
    assert!(store.remove("alice@contoso.com").unwrap());
    assert!(!store.remove("alice@contoso.com").unwrap());
}

#[cfg(unix)]
#[test]
fn files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    store.save("a@b.c", &tokens("rt")).unwrap();
    let mode = fs::metadata(store.path_for("a@b.c"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let mode = fs::metadata(store.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn hostile_names_stay_inside_the_directory() {
    let store = TokenStore::new(Path::new("/state"));
    for name in [
        "../../etc/passwd",
        "..",
        "a/b@c",
        "a\\b@c",
        "x\0y",
        ".hidden@x",
    ] {
        let p = store.path_for(name);
        assert_eq!(p.parent().unwrap(), Path::new("/state/tokens"), "{name}");
        assert!(
            !p.file_name().unwrap().to_string_lossy().starts_with('.'),
            "{name}"
        );
    }
}

#[test]
fn damaged_and_foreign_files_are_reported_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    store.save("a@b.c", &tokens("rt")).unwrap();
    fs::write(store.path_for("a@b.c"), b"{not json").unwrap();
    assert!(matches!(
        store.load("a@b.c"),
        Err(StoreError::Corrupt { .. })
    ));
    fs::write(
        store.path_for("a@b.c"),
        br#"{"version":1,"account":"x@y.z"}"#,
    )
    .unwrap();
    assert!(matches!(
        store.load("a@b.c"),
        Err(StoreError::Corrupt { .. })
    ));
    fs::write(
        store.path_for("a@b.c"),
        br#"{"version":9,"account":"a@b.c"}"#,
    )
    .unwrap();
    assert!(matches!(
        store.load("a@b.c"),
        Err(StoreError::TooNew { .. })
    ));
}

fn key(password: &str, salt: u8) -> SealKey {
    SealKey::derive(
        password.as_bytes(),
        crate::auth::password::TEST_PARAMS,
        [salt; SALT_LEN],
    )
    .unwrap()
}

fn sealed(store: &TokenStore, account: &str) -> SealedTokens {
    match store.load_entry(account).unwrap().unwrap() {
        Entry::Sealed(s) => s,
        Entry::Unsealed(_) => panic!("{account} is not sealed"),
    }
}

#[test]
fn sealed_entries_open_with_their_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    let k = key("right", 1);
    store
        .save_sealed("a@b.c", &tokens("rt-sealed"), &k)
        .unwrap();
    let text = fs::read_to_string(store.path_for("a@b.c")).unwrap();
    assert!(!text.contains("rt-sealed"), "{text}");
    assert!(text.contains("\"version\": 2") && text.contains("argon2id"));
    let entry = sealed(&store, "a@b.c");
    assert_eq!(entry.params(), crate::auth::password::TEST_PARAMS);
    assert_eq!(entry.salt(), [1; SALT_LEN]);
    let t = entry.open(&k).unwrap();
    assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt-sealed");
    assert_eq!(t.access_token.unwrap().expose_secret(), "at-for-rt-sealed");
    assert_eq!(t.expires_at, Some(1_900_000_000));
    assert!(matches!(
        entry.open(&key("wrong", 1)),
        Err(OpenError::WrongPassword)
    ));
    assert!(matches!(
        entry.open(&key("right", 2)),
        Err(OpenError::WrongPassword)
    ));
    assert!(matches!(
        store.load("a@b.c"),
        Err(StoreError::Sealed { .. })
    ));
}

#[test]
fn every_write_draws_a_new_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    let k = key("pw", 1);
    let nonce_of = |store: &TokenStore| sealed(store, "a@b.c").nonce;
    store.save_sealed("a@b.c", &tokens("rt"), &k).unwrap();
    let first = nonce_of(&store);
    store.save_sealed("a@b.c", &tokens("rt"), &k).unwrap();
    assert_ne!(first, nonce_of(&store));
}

#[test]
fn damaged_sealed_files_are_reported_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    let k = key("pw", 1);
    store.save_sealed("a@b.c", &tokens("rt"), &k).unwrap();
    let path = store.path_for("a@b.c");
    let good: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    let edit = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v = good.clone();
        f(&mut v);
        fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    };
    // A flipped ciphertext byte: the password is right, the file is not.
    edit(&|v| {
        let ct = v["sealed"]["ciphertext"].as_str().unwrap();
        let mut raw = B64.decode(ct).unwrap();
        raw[3] ^= 1;
        v["sealed"]["ciphertext"] = B64.encode(raw).into();
    });
    assert!(matches!(
        sealed(&store, "a@b.c").open(&k),
        Err(OpenError::Damaged(StoreError::Corrupt { .. }))
    ));
    // Shapes that cannot be a sealed entry are refused on reading.
    for bad in [
        &(|v: &mut serde_json::Value| v["sealed"]["nonce"] = "AAAA".into())
            as &dyn Fn(&mut serde_json::Value),
        &|v| v["sealed"]["salt"] = "!!".into(),
        &|v| v["sealed"]["kdf"] = "scrypt".into(),
        &|v| v["refresh_token"] = "rt-in-clear".into(),
        &|v| v["version"] = 1.into(),
    ] {
        edit(bad);
        assert!(
            matches!(store.load_entry("a@b.c"), Err(StoreError::Corrupt { .. })),
            "{:?}",
            store.load_entry("a@b.c")
        );
    }
    // A sealed entry moved to another account's file does not open there.
    edit(&|_| {});
    fs::copy(&path, store.path_for("x@b.c")).unwrap();
    let mut moved: serde_json::Value =
        serde_json::from_slice(&fs::read(store.path_for("x@b.c")).unwrap()).unwrap();
    moved["account"] = "x@b.c".into();
    fs::write(store.path_for("x@b.c"), serde_json::to_vec(&moved).unwrap()).unwrap();
    assert!(matches!(
        sealed(&store, "x@b.c").open(&k),
        Err(OpenError::Damaged(_))
    ));
}

#[test]
fn version_1_files_read_as_unsealed() {
    let dir = tempfile::tempdir().unwrap();
    let store = TokenStore::new(dir.path());
    store.save("a@b.c", &tokens("rt")).unwrap();
    fs::write(
        store.path_for("a@b.c"),
        br#"{"version":1,"account":"a@b.c","refresh_token":"rt-v1","access_token":null,"expires_at":null}"#,
    )
    .unwrap();
    match store.load_entry("a@b.c").unwrap().unwrap() {
        Entry::Unsealed(t) => {
            assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt-v1")
        }
        Entry::Sealed(_) => panic!("a version 1 file is not sealed"),
    }
}

#[test]
fn debug_does_not_show_tokens() {
    let s = format!("{:?}", tokens("rt-secret"));
    assert!(!s.contains("rt-secret"));
}
