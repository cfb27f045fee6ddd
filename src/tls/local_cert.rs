//! The certificate the proxy shows its own mail clients: `cert_file` and
//! `key_file` when configured, otherwise one it made itself (rcgen) under
//! `state_dir/certs/`, kept across restarts and made anew before it expires
//! or when the names it must carry change.
//!
//! A generated certificate is self-signed and not a CA: trusting it lets a
//! client accept this proxy and nothing else, so no signing key that could
//! vouch for other sites ever sits on disk.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::RwLock;
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// File names under `state_dir/certs/`.
pub(crate) const CERT_FILE_NAME: &str = "local-cert.pem";
pub(crate) const KEY_FILE_NAME: &str = "local-key.pem";
/// Apple's platforms refuse TLS server certificates valid for more than 825
/// days, whoever issued them; stay just under.
const VALIDITY: Duration = Duration::from_secs(820 * 86_400);
/// A generated certificate is replaced when less than this is left, so a
/// client never meets an expired one.
pub(crate) const RENEW_BEFORE: Duration = Duration::from_secs(30 * 86_400);
/// How often a running proxy looks whether its certificate needs renewing
/// (or, for `cert_file`, whether the files were replaced).
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("cannot make a certificate: {0}")]
    Generate(String),
    #[error("{cert} and {key} do not go together: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// Where the certificate comes from, and what a generated one must name.
#[derive(Debug, Clone)]
pub struct CertSource {
    configured: Option<(PathBuf, PathBuf)>,
    dir: PathBuf,
    names: Vec<String>,
}

/// How [`CertSource::load`] got the certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `cert_file` and `key_file`.
    Configured,
    /// The generated one from an earlier start.
    Reused,
    /// Generated just now.
    Generated,
}

/// A certificate chain with its key, ready for rustls.
pub struct Loaded {
    pub certified: Arc<CertifiedKey>,
    pub origin: Origin,
    pub cert_path: PathBuf,
}

impl CertSource {
    pub fn from_config(config: &Config) -> CertSource {
        let configured = match (&config.proxy.cert_file, &config.proxy.key_file) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            _ => None,
        };
        let mut names: Vec<String> = vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
        if let Some(host) = host_name() {
            names.push(host);
        }
        // A LAN listener's own address, so devices that connect by address verify.
        for l in &config.listeners {
            let ip = l.listen.ip();
            if !ip.is_loopback() && !ip.is_unspecified() {
                names.push(ip.to_string());
            }
        }
        names.extend(config.proxy.cert_names.iter().cloned());
        let mut unique: Vec<String> = Vec::new();
        for n in names {
            let n = n.trim().to_ascii_lowercase();
            if !n.is_empty() && !unique.contains(&n) {
                unique.push(n);
            }
        }
        CertSource {
            configured,
            dir: config.state_dir().join("certs"),
            names: unique,
        }
    }

    /// The PEM file clients are told to trust.
    pub(crate) fn cert_path(&self) -> PathBuf {
        match &self.configured {
            Some((cert, _)) => cert.clone(),
            None => self.dir.join(CERT_FILE_NAME),
        }
    }

    fn key_path(&self) -> PathBuf {
        match &self.configured {
            Some((_, key)) => key.clone(),
            None => self.dir.join(KEY_FILE_NAME),
        }
    }

    /// The names a generated certificate carries.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The configured certificate, or the generated one if it is still good
    /// for [`RENEW_BEFORE`] and names everything it must, or a new one.
    pub fn load(&self, now: SystemTime) -> Result<Loaded, CertError> {
        let (cert_path, key_path) = (self.cert_path(), self.key_path());
        if self.configured.is_some() {
            return Ok(Loaded {
                certified: read_pair(&cert_path, &key_path)?,
                origin: Origin::Configured,
                cert_path,
            });
        }
        if let Ok(certified) = read_pair(&cert_path, &key_path)
            && let Some(end_entity) = certified.cert.first()
            && let Some(info) = CertInfo::parse(end_entity)
            && info.good_until(now, RENEW_BEFORE)
            && self.names.iter().all(|n| info.names.contains(n))
        {
            return Ok(Loaded {
                certified,
                origin: Origin::Reused,
                cert_path,
            });
        }
        let (cert_pem, key_pem) = generate(&self.names, now)?;
        crate::fs_secure::private_dir(&self.dir).map_err(|e| CertError::Write {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        // The key first: a certificate on disk without its key would be
        // reloaded as a mismatch and replaced anyway, but never half-used.
        write_atomic(&key_path, key_pem.as_bytes(), true)?;
        write_atomic(&cert_path, cert_pem.as_bytes(), false)?;
        Ok(Loaded {
            certified: read_pair(&cert_path, &key_path)?,
            origin: Origin::Generated,
            cert_path,
        })
    }
}

/// Reads a PEM chain and its key (rustls-pki-types' PEM parser) and checks
/// that they belong together.
fn read_pair(cert_path: &Path, key_path: &Path) -> Result<Arc<CertifiedKey>, CertError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |e: rustls::pki_types::pem::Error| CertError::Read {
            path,
            reason: e.to_string(),
        }
    };
    let chain = CertificateDer::pem_file_iter(cert_path)
        .map_err(read_err(cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(cert_path))?;
    if chain.is_empty() {
        return Err(CertError::Read {
            path: cert_path.to_owned(),
            reason: "no CERTIFICATE block in it".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(read_err(key_path))?;
    CertifiedKey::from_der(chain, key, &super::provider())
        .map(Arc::new)
        .map_err(|e| CertError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            reason: e.to_string(),
        })
}

/// A new self-signed ECDSA P-256 certificate for `names`, as PEM (cert, key).
fn generate(names: &[String], now: SystemTime) -> Result<(String, String), CertError> {
    let gen_err = |e: rcgen::Error| CertError::Generate(e.to_string());
    let key = KeyPair::generate().map_err(gen_err)?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(gen_err)?;
    let host = names.get(3).map(String::as_str).unwrap_or("localhost");
    params
        .distinguished_name
        .push(DnType::CommonName, format!("xoauth2-proxy on {host}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "xoauth2-proxy (local)");
    let start = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
    params.not_before = to_offset(start)?;
    params.not_after = to_offset(now + VALIDITY)?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key).map_err(gen_err)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn to_offset(t: SystemTime) -> Result<time::OffsetDateTime, CertError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|e| CertError::Generate(e.to_string()))?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .map_err(|e| CertError::Generate(e.to_string()))
}

/// Temp file, fsync, rename; `secret` files are owner-only from creation
/// (a protected DACL on Windows, which the rename keeps).
fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let err = |e: std::io::Error| CertError::Write {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = if secret {
        crate::fs_secure::create_private_file(&tmp)
    } else {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // The certificate is public: mail clients may be pointed at it.
            options.mode(0o644);
        }
        options.open(&tmp)
    }
    .map_err(err)?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(err)
}

/// What `cert show` and the reuse check need from a certificate.
#[derive(Debug, Clone)]
pub struct CertInfo {
    /// DNS names (lowercase) and IP addresses (as text) in subjectAltName.
    pub names: Vec<String>,
    pub not_after: i64,
    pub self_signed: bool,
}

impl CertInfo {
    pub fn parse(der: &CertificateDer<'_>) -> Option<CertInfo> {
        use x509_parser::extensions::GeneralName;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => names.push(d.to_ascii_lowercase()),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                            _ => None,
                        };
                        names.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        Some(CertInfo {
            names,
            not_after: cert.validity().not_after.timestamp(),
            self_signed: cert.subject() == cert.issuer(),
        })
    }

    /// Still valid `margin` from `now`.
    pub(crate) fn good_until(&self, now: SystemTime, margin: Duration) -> bool {
        let limit = now + margin;
        let limit = limit
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        self.not_after > limit
    }
}

/// SHA-256 of the DER certificate, as `AB:CD:…` (how Windows, macOS and
/// Thunderbird show it).
pub fn fingerprint(der: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(der.as_ref());
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

/// This machine's host name, when it is a usable DNS name.
pub(crate) fn host_name() -> Option<String> {
    let name = raw_host_name()?;
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    let valid = matches!(
        ServerName::try_from(name.as_str()),
        Ok(ServerName::DnsName(_))
    );
    valid.then_some(name)
}

#[cfg(unix)]
fn raw_host_name() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for `len` bytes; gethostname writes at most
    // that many and we read only up to the first NUL (or the whole buffer).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8(buf.get(..end)?.to_vec()).ok()
}

#[cfg(not(unix))]
fn raw_host_name() -> Option<String> {
    std::env::var("COMPUTERNAME").ok()
}

/// The certificate the TLS acceptor hands out; replaced in place when it is
/// renewed, so running listeners pick up the new one with the next handshake.
#[derive(Debug)]
pub struct ReloadableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    pub fn new(certified: Arc<CertifiedKey>) -> Arc<ReloadableCert> {
        Arc::new(ReloadableCert {
            current: RwLock::new(certified),
        })
    }

    pub fn replace(&self, certified: Arc<CertifiedKey>) {
        *self.current.write() = certified;
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().clone()
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// What `xoauth2-proxy cert show` prints.
pub fn describe(loaded: &Loaded) -> String {
    let path = loaded.cert_path.display();
    let mut out = String::new();
    let origin = match loaded.origin {
        Origin::Configured => "cert_file in the configuration",
        Origin::Reused => "generated by xoauth2-proxy",
        Origin::Generated => "generated by xoauth2-proxy just now",
    };
    let _ = writeln!(out, "Local TLS certificate: {path}");
    let _ = writeln!(out, "  source:      {origin}");
    if let Some(der) = loaded.certified.cert.first() {
        if let Some(info) = CertInfo::parse(der) {
            let _ = writeln!(out, "  names:       {}", info.names.join(", "));
            let until = time::OffsetDateTime::from_unix_timestamp(info.not_after)
                .map(|t| t.date().to_string())
                .unwrap_or_else(|_| info.not_after.to_string());
            let _ = writeln!(out, "  valid until: {until} (UTC)");
        }
        let _ = writeln!(out, "  SHA-256:     {}", fingerprint(der));
    }
    let _ = writeln!(
        out,
        "\nMail clients using local_tls must trust this certificate (not needed if a CA they\n\
         already trust issued it). Compare the SHA-256 fingerprint with what the client shows.\n\
         \n\
         Windows (Outlook, Windows Mail, .NET programs), for the current user:\n\
         \x20   certutil -user -addstore Root \"{path}\"\n\
         macOS (Apple Mail):\n\
         \x20   security add-trusted-cert -r trustRoot -k ~/Library/Keychains/login.keychain-db \"{path}\"\n\
         Linux (fetchmail, mutt, Python and other programs using the system store):\n\
         \x20   Debian/Ubuntu: sudo cp \"{path}\" /usr/local/share/ca-certificates/xoauth2-proxy.crt \\\n\
         \x20                    && sudo update-ca-certificates\n\
         \x20   Fedora/RHEL:   sudo cp \"{path}\" /etc/pki/ca-trust/source/anchors/xoauth2-proxy.pem \\\n\
         \x20                    && sudo update-ca-trust\n\
         Thunderbird (any system) keeps its own store: confirm the security exception it offers\n\
         \x20   at the first connection (after checking the fingerprint), or add it beforehand under\n\
         \x20   Settings > Privacy & Security > Certificates > Manage Certificates > Servers."
    );
    if loaded.origin != Origin::Configured {
        let _ = writeln!(
            out,
            "\nThe proxy renews this certificate {} days before it expires; clients must then\n\
             trust the new one (run this command again).",
            RENEW_BEFORE.as_secs() / 86_400
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(dir: &Path, names: &[&str]) -> CertSource {
        CertSource {
            configured: None,
            dir: dir.join("certs"),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn generated_once_then_reused_then_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), &["localhost", "127.0.0.1", "::1"]);
        let now = SystemTime::now();
        let first = src.load(now).unwrap();
        assert_eq!(first.origin, Origin::Generated);
        let again = src.load(now).unwrap();
        assert_eq!(again.origin, Origin::Reused);
        assert_eq!(again.certified.cert, first.certified.cert);
        let info = CertInfo::parse(&first.certified.cert[0]).unwrap();
        assert_eq!(info.names, ["localhost", "127.0.0.1", "::1"]);
        assert!(info.self_signed);
        // Close to expiry: replaced.
        let later = now + VALIDITY - RENEW_BEFORE + Duration::from_secs(86_400);
        let renewed = src.load(later).unwrap();
        assert_eq!(renewed.origin, Origin::Generated);
        assert_ne!(renewed.certified.cert, first.certified.cert);
        // A new name: replaced.
        let more = source(
            dir.path(),
            &["localhost", "127.0.0.1", "::1", "scanner.lan"],
        );
        assert_eq!(more.load(later).unwrap().origin, Origin::Generated);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("certs").join(KEY_FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_broken_generated_pair_is_replaced_a_broken_configured_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let src = source(dir.path(), &["localhost"]);
        src.load(SystemTime::now()).unwrap();
        std::fs::write(src.key_path(), "garbage").unwrap();
        assert_eq!(
            src.load(SystemTime::now()).unwrap().origin,
            Origin::Generated
        );
        let configured = CertSource {
            configured: Some((src.cert_path(), dir.path().join("missing.pem"))),
            ..src
        };
        let e = configured
            .load(SystemTime::now())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn fingerprint_format() {
        let f = fingerprint(&CertificateDer::from(vec![1u8, 2, 3]));
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("03:90:58:C6:F2:C0"), "{f}");
    }
}
