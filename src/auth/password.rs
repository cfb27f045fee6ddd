//! The local password: keys derived from it (Argon2id), Argon2 PHC strings for
//! `password_hash`, and the per-process digest that makes a repeat login cost
//! microseconds instead of a KDF run.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Argon2id memory cost in KiB: OWASP's recommended minimum (19 MiB, t=2, p=1).
/// Raise these three to strengthen new seals; old entries are re-sealed with
/// the new values at their next successful login.
pub const KDF_MEMORY_KIB: u32 = 19_456;
/// Argon2id passes over the memory (OWASP minimum for 19 MiB).
pub const KDF_ITERATIONS: u32 = 2;
/// Argon2id lanes. One: the proxy derives at most one key per account at a
/// time, and more lanes would only split the same memory.
pub const KDF_LANES: u32 = 1;
/// The caps on Argon2 costs read from files (their reasons are beside them).
pub use crate::config::{MAX_KDF_ITERATIONS, MAX_KDF_LANES, MAX_KDF_MEMORY_KIB};
/// Length of the random salt drawn for every account binding.
pub const SALT_LEN: usize = 16;
/// Length of the XChaCha20-Poly1305 key.
pub const KEY_LEN: usize = 32;

/// What the password check of the sealed vault compares against: the second
/// half of the KDF output, keyed over this label (so the stored value reveals
/// nothing about the sealing key, the first half).
const CHECK_LABEL: &[u8] = b"xoauth2-proxy vault password check v2";

type HmacSha256 = Hmac<Sha256>;

/// Argon2id cost parameters, stored beside each seal so they can be raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub lanes: u32,
}

impl KdfParams {
    /// What this build seals with.
    pub const CURRENT: KdfParams = KdfParams {
        memory_kib: KDF_MEMORY_KIB,
        iterations: KDF_ITERATIONS,
        lanes: KDF_LANES,
    };

    /// Whether these parameters stay within the caps (`MAX_KDF_*`); the
    /// error names the one that does not.
    pub fn within_caps(&self) -> Result<(), KdfError> {
        check_caps(self.memory_kib, self.iterations, self.lanes)
    }

    fn argon2(&self, output_len: usize) -> Result<Argon2<'static>, KdfError> {
        self.within_caps()?;
        let params = Params::new(
            self.memory_kib,
            self.iterations,
            self.lanes,
            Some(output_len),
        )
        .map_err(|e| KdfError(format!("unusable Argon2 parameters {self:?}: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KdfError(String);

/// Argon2 costs within the caps, checked before any memory is taken.
pub(crate) fn check_caps(memory_kib: u32, iterations: u32, lanes: u32) -> Result<(), KdfError> {
    crate::config::check_argon2_caps(memory_kib, iterations, lanes).map_err(KdfError)
}

/// A key derived from an account's local password: the sealing key and the
/// value the password check compares. Zeroed when dropped; `Debug` shows
/// only the parameters.
pub struct SealKey {
    seal: Zeroizing<[u8; KEY_LEN]>,
    check: Zeroizing<[u8; KEY_LEN]>,
    params: KdfParams,
    salt: [u8; SALT_LEN],
}

impl std::fmt::Debug for SealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealKey")
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

impl SealKey {
    /// Runs Argon2id (tens of milliseconds with [`KdfParams::CURRENT`]:
    /// call it from a blocking thread).
    pub fn derive(
        password: &[u8],
        params: KdfParams,
        salt: [u8; SALT_LEN],
    ) -> Result<SealKey, KdfError> {
        let mut out = Zeroizing::new([0u8; 2 * KEY_LEN]);
        params
            .argon2(2 * KEY_LEN)?
            .hash_password_into(password, &salt, out.as_mut())
            .map_err(|e| KdfError(format!("Argon2 failed: {e}")))?;
        let mut seal = Zeroizing::new([0u8; KEY_LEN]);
        let mut check = Zeroizing::new([0u8; KEY_LEN]);
        seal.copy_from_slice(&out[..KEY_LEN]);
        check.copy_from_slice(&out[KEY_LEN..]);
        Ok(SealKey {
            seal,
            check,
            params,
            salt,
        })
    }

    pub fn params(&self) -> KdfParams {
        self.params
    }

    pub fn salt(&self) -> [u8; SALT_LEN] {
        self.salt
    }

    pub(crate) fn seal_key(&self) -> &[u8; KEY_LEN] {
        &self.seal
    }

    fn check_mac(&self) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(self.check.as_ref()).expect("HMAC takes any key");
        mac.update(CHECK_LABEL);
        mac
    }

    /// The value stored beside a seal to tell a wrong password from a damaged file.
    pub fn check_value(&self) -> [u8; 32] {
        self.check_mac().finalize().into_bytes().into()
    }

    /// Whether `stored` is this key's check value (constant time).
    pub fn check_matches(&self, stored: &[u8]) -> bool {
        self.check_mac().verify_slice(stored).is_ok()
    }
}

/// A fresh random salt.
pub fn random_salt() -> [u8; SALT_LEN] {
    let mut salt = [0u8; SALT_LEN];
    fill_random(&mut salt);
    salt
}

/// Fills `buf` from the operating system's generator. Without one no key or
/// nonce can be made safely, so its absence is fatal.
pub fn fill_random(buf: &mut [u8]) {
    getrandom::fill(buf).expect("the operating system's random number generator is unavailable");
}

/// Makes an Argon2id PHC string (`$argon2id$v=19$m=…`) for `password_hash`.
pub fn hash_password(password: &[u8]) -> Result<String, KdfError> {
    let salt = SaltString::encode_b64(&random_salt())
        .map_err(|e| KdfError(format!("cannot encode the salt: {e}")))?;
    let hash = KdfParams::CURRENT
        .argon2(Params::DEFAULT_OUTPUT_LEN)?
        .hash_password(password, &salt)
        .map_err(|e| KdfError(format!("Argon2 failed: {e}")))?;
    Ok(hash.to_string())
}

/// Whether `password` matches the PHC string `phc` (runs the KDF it names).
pub fn verify_phc(password: &[u8], phc: &str) -> Result<bool, KdfError> {
    let hash = PasswordHash::new(phc).map_err(|e| KdfError(format!("bad password_hash: {e}")))?;
    let params = Params::try_from(&hash)
        .map_err(|e| KdfError(format!("bad password_hash parameters: {e}")))?;
    check_caps(params.m_cost(), params.t_cost(), params.p_cost())?;
    match Argon2::default().verify_password(password, &hash) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(KdfError(format!("cannot check password_hash: {e}"))),
    }
}

/// A keyed digest of passwords that were verified once in this process.
/// The key is random per process and never stored, so the digests are
/// worthless outside it; comparisons run in constant time. A clone shares
/// the key (a reload keeps the digests of unlocked accounts valid).
#[derive(Clone)]
pub struct PasswordDigest {
    key: Zeroizing<[u8; 32]>,
}

/// The digest of one password under a [`PasswordDigest`] key.
#[derive(Clone)]
pub struct Tag([u8; 32]);

impl std::fmt::Debug for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tag(<redacted>)")
    }
}

impl Default for PasswordDigest {
    fn default() -> Self {
        Self::new()
    }
}

impl PasswordDigest {
    pub fn new() -> PasswordDigest {
        let mut key = Zeroizing::new([0u8; 32]);
        fill_random(key.as_mut());
        PasswordDigest { key }
    }

    fn mac(&self, password: &[u8]) -> HmacSha256 {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(self.key.as_ref()).expect("HMAC takes any key");
        mac.update(password);
        mac
    }

    pub fn tag(&self, password: &[u8]) -> Tag {
        Tag(self.mac(password).finalize().into_bytes().into())
    }

    /// Whether `password` is the one `tag` was made from (constant time).
    pub fn matches(&self, password: &[u8], tag: &Tag) -> bool {
        self.mac(password).verify_slice(&tag.0).is_ok()
    }
}

/// Cheap parameters for unit tests: they check behaviour, not cost.
#[cfg(test)]
pub(crate) const TEST_PARAMS: KdfParams = KdfParams {
    memory_kib: 64,
    iterations: 1,
    lanes: 1,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_parameters_are_at_least_owasp() {
        let p = KdfParams::CURRENT;
        assert!(p.memory_kib >= 19_456 && p.iterations >= 2 && p.lanes >= 1);
        p.argon2(2 * KEY_LEN).unwrap();
    }

    #[test]
    fn derived_keys_depend_on_password_salt_and_params() {
        let salt = [7u8; SALT_LEN];
        let a = SealKey::derive(b"pw", TEST_PARAMS, salt).unwrap();
        let b = SealKey::derive(b"pw", TEST_PARAMS, salt).unwrap();
        assert_eq!(a.seal_key(), b.seal_key());
        assert!(a.check_matches(&b.check_value()));
        let other_pw = SealKey::derive(b"pw2", TEST_PARAMS, salt).unwrap();
        let other_salt = SealKey::derive(b"pw", TEST_PARAMS, [8u8; SALT_LEN]).unwrap();
        let other_params = SealKey::derive(
            b"pw",
            KdfParams {
                iterations: 2,
                ..TEST_PARAMS
            },
            salt,
        )
        .unwrap();
        for k in [&other_pw, &other_salt, &other_params] {
            assert_ne!(k.seal_key(), a.seal_key());
            assert!(!k.check_matches(&a.check_value()));
        }
        assert_ne!(&a.check_value()[..], &a.seal_key()[..]);
        assert!(!format!("{a:?}").contains("seal:"));
    }

    #[test]
    fn phc_strings_round_trip_and_bad_ones_are_explained() {
        use crate::config::validate_phc;
        let phc = hash_password(b"scanner-pw").unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        validate_phc(&phc).unwrap();
        assert!(verify_phc(b"scanner-pw", &phc).unwrap());
        assert!(!verify_phc(b"scanner-pW", &phc).unwrap());
        assert!(validate_phc("hunter2").unwrap_err().contains("PHC"));
        assert!(
            validate_phc("$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo")
                .unwrap_err()
                .contains("not Argon2")
        );
        assert!(validate_phc("$argon2id$v=19$m=19456,t=2,p=1").is_err());
    }

    #[test]
    fn hostile_costs_are_refused_before_any_work() {
        use crate::config::validate_phc;
        let started = std::time::Instant::now();
        let salt = [1u8; SALT_LEN];
        for params in [
            KdfParams {
                memory_kib: 4 * 1024 * 1024,
                ..TEST_PARAMS
            },
            KdfParams {
                iterations: 100_000,
                ..TEST_PARAMS
            },
            KdfParams {
                memory_kib: 8 * 64,
                lanes: 64,
                ..TEST_PARAMS
            },
        ] {
            let e = SealKey::derive(b"pw", params, salt).unwrap_err();
            assert!(e.to_string().contains("above this proxy's limit"), "{e}");
        }
        KdfParams {
            memory_kib: MAX_KDF_MEMORY_KIB,
            iterations: MAX_KDF_ITERATIONS,
            lanes: MAX_KDF_LANES,
        }
        .within_caps()
        .unwrap();
        let phc = hash_password(b"x").unwrap();
        let huge = phc.replace("m=19456,t=2,p=1", "m=4194304,t=1000,p=64");
        let why = validate_phc(&huge).unwrap_err();
        assert!(why.contains("memory") && why.contains("limit"), "{why}");
        assert!(verify_phc(b"x", &huge).is_err());
        let slow = phc.replace("t=2", "t=11");
        assert!(validate_phc(&slow).unwrap_err().contains("passes"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn digest_matches_only_its_password_and_is_per_process() {
        let d = PasswordDigest::new();
        let tag = d.tag(b"secret");
        assert!(d.matches(b"secret", &tag));
        assert!(!d.matches(b"secreT", &tag));
        assert!(!d.matches(b"", &tag));
        assert!(!PasswordDigest::new().matches(b"secret", &tag));
        assert_eq!(format!("{tag:?}"), "Tag(<redacted>)");
    }
}
