//! Certificate credentials: a signed JWT client assertion (RFC 7523) in
//! place of a client secret, as the Microsoft identity platform accepts.
//!
//! The assertion is `header.claims.signature` (base64url without padding),
//! signed RS256 with the app's RSA key. The header names the certificate by
//! `x5t#S256`, the SHA-256 thumbprint of its DER, so the identity platform
//! finds the public key registered with the app.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::pem::{PemObject, SectionKind};
use secrecy::SecretString;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The `client_assertion_type` of a JWT client assertion.
pub const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long an assertion is valid: the identity platform accepts up to ten
/// minutes, and each is used for one request.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(600);

/// Why a certificate credential cannot be used. Names the setting at fault;
/// never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error("client_certificate: cannot read {path}: {reason}")]
    ReadCertificate { path: String, reason: String },
    #[error("client_certificate: {0}")]
    Certificate(String),
    #[error("client_key: cannot read {path}: {reason}")]
    ReadKey { path: String, reason: String },
    #[error("client_key: {0}")]
    Key(String),
    #[error("cannot sign the client assertion: {0}")]
    Sign(String),
}

impl CertificateError {
    /// The account setting at fault (`client_certificate` or `client_key`).
    pub fn setting(&self) -> &'static str {
        match self {
            CertificateError::ReadCertificate { .. } | CertificateError::Certificate(_) => {
                "client_certificate"
            }
            _ => "client_key",
        }
    }
}

/// How the private key is encoded (both are RSA).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyFormat {
    Pkcs8,
    Pkcs1,
}

/// An app's certificate credential: the thumbprint of the certificate and
/// its RSA private key (DER, wiped on drop). `Debug` shows the thumbprint only.
pub struct ClientCertificate {
    thumbprint_s256: String,
    key_der: Zeroizing<Vec<u8>>,
    format: KeyFormat,
}

impl std::fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("x5t#S256", &self.thumbprint_s256)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ClientCertificate {
    /// Reads `client_certificate` (PEM; the first certificate is the app's)
    /// and `client_key` (PEM: PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
    pub fn load(certificate: &Path, key: &Path) -> Result<ClientCertificate, CertificateError> {
        let cert_pem =
            std::fs::read(certificate).map_err(|e| CertificateError::ReadCertificate {
                path: certificate.display().to_string(),
                reason: e.to_string(),
            })?;
        let key_pem =
            Zeroizing::new(std::fs::read(key).map_err(|e| CertificateError::ReadKey {
                path: key.display().to_string(),
                reason: e.to_string(),
            })?);
        Self::from_pem(&cert_pem, &key_pem)
    }

    /// The same from PEM text in memory.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<ClientCertificate, CertificateError> {
        let mut cert_der = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(cert_pem) {
            match section {
                Ok((SectionKind::Certificate, der)) => {
                    cert_der = Some(der);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    return Err(CertificateError::Certificate(format!(
                        "not valid PEM ({e})"
                    )));
                }
            }
        }
        let cert_der = cert_der.ok_or_else(|| {
            CertificateError::Certificate("holds no PEM CERTIFICATE block".into())
        })?;
        x509_parser::parse_x509_certificate(&cert_der).map_err(|_| {
            CertificateError::Certificate(
                "the CERTIFICATE block is not an X.509 certificate".into(),
            )
        })?;
        let thumbprint_s256 = B64URL.encode(Sha256::digest(&cert_der));

        let mut key = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(key_pem) {
            // Wrapped at once, so every copy of key bytes is wiped.
            let section = section.map(|(kind, der)| (kind, Zeroizing::new(der)));
            match section {
                Ok((SectionKind::PrivateKey, der)) => {
                    key = Some((der, KeyFormat::Pkcs8));
                    break;
                }
                Ok((SectionKind::RsaPrivateKey, der)) => {
                    key = Some((der, KeyFormat::Pkcs1));
                    break;
                }
                Ok((SectionKind::EcPrivateKey, _)) => {
                    return Err(CertificateError::Key(
                        "is an EC key; the identity platform needs an RSA key".into(),
                    ));
                }
                Ok(_) => {}
                // pki-types' message names the section, never its contents.
                Err(e) => return Err(CertificateError::Key(format!("not valid PEM ({e})"))),
            }
        }
        let (key_der, format) = key.ok_or_else(|| {
            CertificateError::Key(
                "holds no PEM PRIVATE KEY or RSA PRIVATE KEY block (unencrypted)".into(),
            )
        })?;
        let loaded = ClientCertificate {
            thumbprint_s256,
            key_der,
            format,
        };
        // Parse once now, so a bad key is reported at startup.
        loaded.key_pair().map_err(CertificateError::Key)?;
        Ok(loaded)
    }

    /// base64url(SHA-256(certificate DER)): the `x5t#S256` header value.
    pub fn thumbprint_s256(&self) -> &str {
        &self.thumbprint_s256
    }

    /// The key pair, parsed for one use (ring keeps it only as long as that).
    fn key_pair(&self) -> Result<RsaKeyPair, String> {
        let parsed = match self.format {
            KeyFormat::Pkcs8 => RsaKeyPair::from_pkcs8(&self.key_der),
            KeyFormat::Pkcs1 => RsaKeyPair::from_der(&self.key_der),
        };
        parsed.map_err(|e| format!("is not a usable RSA private key ({e})"))
    }

    /// A client assertion for `client_id` at the token endpoint `audience`,
    /// valid from `now` for [`ASSERTION_LIFETIME`].
    pub fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: SystemTime,
    ) -> Result<SecretString, CertificateError> {
        let iat = now
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({
            "alg": "RS256",
            "typ": "JWT",
            "x5t#S256": self.thumbprint_s256,
        });
        let mut jti = [0u8; 16];
        super::password::fill_random(&mut jti);
        let claims = serde_json::json!({
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": uuid_text(&jti),
            "nbf": iat,
            "iat": iat,
            "exp": iat + ASSERTION_LIFETIME.as_secs(),
        });
        let signing_input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let key = self.key_pair().map_err(CertificateError::Sign)?;
        let mut signature = vec![0u8; key.public().modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .map_err(|_| CertificateError::Sign("RSA signing failed".into()))?;
        Ok(SecretString::from(format!(
            "{signing_input}.{}",
            B64URL.encode(signature)
        )))
    }
}

/// 16 random bytes as a version-4 UUID, the usual shape of a `jti`.
fn uuid_text(bytes: &[u8; 16]) -> String {
    let mut b = *bytes;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
    use secrecy::ExposeSecret;

    const CERT: &str = include_str!("../../tests/fixtures/client_cert.pem");
    const KEY_PKCS8: &str = include_str!("../../tests/fixtures/client_key.pem");
    const KEY_PKCS1: &str = include_str!("../../tests/fixtures/client_key_rsa.pem");
    const OTHER_KEY: &str = include_str!("../../tests/fixtures/other_key.pem");
    const EC_KEY: &str = include_str!("../../tests/fixtures/ec_key.pem");

    /// The certificate's RSAPublicKey (PKCS#1 DER), what ring verifies with.
    fn public_key() -> Vec<u8> {
        let (_, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(CERT.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.public_key().subject_public_key.data.to_vec()
    }

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&B64URL.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn assertion_is_a_verifiable_rs256_jwt() {
        for key in [KEY_PKCS8, KEY_PKCS1] {
            let cert = ClientCertificate::from_pem(CERT.as_bytes(), key.as_bytes()).unwrap();
            let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let jwt = cert
                .assertion("client-1", "https://login.example/t/oauth2/v2.0/token", now)
                .unwrap();
            let jwt = jwt.expose_secret();
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header = decode(parts[0]);
            assert_eq!(header["alg"], "RS256");
            assert_eq!(header["typ"], "JWT");
            let (_, der) = <(SectionKind, Vec<u8>)>::from_pem_slice(CERT.as_bytes()).unwrap();
            assert_eq!(header["x5t#S256"], B64URL.encode(Sha256::digest(&der)));
            let claims = decode(parts[1]);
            assert_eq!(claims["aud"], "https://login.example/t/oauth2/v2.0/token");
            assert_eq!(claims["iss"], "client-1");
            assert_eq!(claims["sub"], "client-1");
            assert_eq!(claims["iat"], 1_700_000_000u64);
            assert_eq!(claims["nbf"], 1_700_000_000u64);
            assert_eq!(claims["exp"], 1_700_000_600u64);
            assert_eq!(claims["jti"].as_str().unwrap().len(), 36);
            let signature = B64URL.decode(parts[2]).unwrap();
            let signed = format!("{}.{}", parts[0], parts[1]);
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key())
                .verify(signed.as_bytes(), &signature)
                .expect("the signature verifies with the certificate's key");
        }
    }

    #[test]
    fn each_assertion_has_its_own_jti() {
        let cert = ClientCertificate::from_pem(CERT.as_bytes(), KEY_PKCS8.as_bytes()).unwrap();
        let a = cert.assertion("c", "aud", SystemTime::now()).unwrap();
        let b = cert.assertion("c", "aud", SystemTime::now()).unwrap();
        let jti =
            |s: &SecretString| decode(s.expose_secret().split('.').nth(1).unwrap())["jti"].clone();
        assert_ne!(jti(&a), jti(&b));
    }

    #[test]
    fn a_foreign_key_does_not_verify() {
        let cert = ClientCertificate::from_pem(CERT.as_bytes(), OTHER_KEY.as_bytes()).unwrap();
        let jwt = cert.assertion("c", "aud", SystemTime::now()).unwrap();
        let parts: Vec<&str> = jwt.expose_secret().split('.').collect();
        let signature = B64URL.decode(parts[2]).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        assert!(
            UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key())
                .verify(signed.as_bytes(), &signature)
                .is_err()
        );
    }

    #[test]
    fn bad_inputs_name_the_setting_and_hide_the_key() {
        let cases: &[(&[u8], &[u8], &str)] = &[
            (b"garbage", KEY_PKCS8.as_bytes(), "client_certificate"),
            (
                KEY_PKCS8.as_bytes(),
                KEY_PKCS8.as_bytes(),
                "client_certificate",
            ),
            (CERT.as_bytes(), b"garbage", "client_key"),
            (CERT.as_bytes(), CERT.as_bytes(), "client_key"),
            (CERT.as_bytes(), EC_KEY.as_bytes(), "client_key"),
        ];
        for (cert, key, setting) in cases {
            let err = ClientCertificate::from_pem(cert, key).unwrap_err();
            assert_eq!(err.setting(), *setting, "{err}");
            let text = err.to_string();
            assert!(text.starts_with(setting), "{text}");
            assert!(!text.contains("MII"), "{text}");
        }
        let cert = ClientCertificate::from_pem(CERT.as_bytes(), KEY_PKCS8.as_bytes()).unwrap();
        let debug = format!("{cert:?}");
        assert!(
            debug.contains("redacted") && !debug.contains("MII"),
            "{debug}"
        );
        let err =
            ClientCertificate::load(Path::new("/nonexistent/c.pem"), Path::new("/x")).unwrap_err();
        assert_eq!(err.setting(), "client_certificate");
    }
}
