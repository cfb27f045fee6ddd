//! A throw-away certificate authority and TLS configurations for the fakes and test clients.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub struct TestPki {
    /// Holds `ca_file`; removed when the `TestPki` is dropped.
    pub dir: tempfile::TempDir,
    /// The CA certificate as PEM, written to a file (the proxy's `ca_file`).
    pub ca_file: PathBuf,
    pub ca_pem: String,
    pub ca_der: CertificateDer<'static>,
    /// Certificate for `localhost` and 127.0.0.1, signed by the CA.
    pub server_config: Arc<rustls::ServerConfig>,
    /// Trusts only the test CA.
    pub client_config: Arc<rustls::ClientConfig>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestPki {
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("generate CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "xoauth2-proxy test CA");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "xoauth2-proxy tests");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = params.self_signed(&ca_key).expect("self-sign the test CA");
        let issuer = Issuer::new(params, ca_key);

        let dir = tempfile::tempdir().expect("create a temp dir for the test CA");
        let ca_file = dir.path().join("test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem())
            .unwrap_or_else(|e| panic!("write {}: {e}", ca_file.display()));

        let ca_der = ca_cert.der().clone();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(ca_der.clone())
            .expect("add the test CA to a root store");
        let client_config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .expect("ring supports TLS 1.2 and 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();

        let (chain, key) = leaf(&issuer, &["localhost", "127.0.0.1"]);
        TestPki {
            dir,
            ca_file,
            ca_pem: ca_cert.pem(),
            ca_der,
            server_config: Arc::new(server_config(chain, key)),
            client_config: Arc::new(client_config),
            issuer,
        }
    }

    /// A server configuration whose certificate, signed by the test CA, names exactly `names`
    /// (DNS names, or IP addresses written as such).
    pub fn server_config_for(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let (chain, key) = leaf(&self.issuer, names);
        Arc::new(server_config(chain, key))
    }

    /// A server configuration with a self-signed certificate for `localhost` and 127.0.0.1
    /// that the test CA did not sign (for "untrusted certificate" tests).
    pub fn untrusted_server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = KeyPair::generate().expect("generate key");
        let params = leaf_params(&["localhost", "127.0.0.1"]);
        let cert = params.self_signed(&key).expect("self-sign");
        Arc::new(server_config(vec![cert.der().clone()], pkcs8(&key)))
    }

    /// A fresh certificate for `names` signed by the test CA, with its private key, as PEM
    /// (for handing to the proxy as its local certificate).
    pub fn leaf_pem(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("generate leaf key");
        let cert = leaf_params(names)
            .signed_by(&key, &self.issuer)
            .expect("sign leaf certificate");
        (cert.pem(), key.serialize_pem())
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

/// The crypto provider every test configuration uses, set explicitly.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).expect("valid certificate names");
    if let Some(first) = names.first() {
        params
            .distinguished_name
            .push(DnType::CommonName, first.as_str());
    }
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params
}

fn pkcs8(key: &KeyPair) -> PrivateKeyDer<'static> {
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()))
}

fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> rustls::ServerConfig {
    rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("test certificate and key match")
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    names: &[&str],
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().expect("generate leaf key");
    let cert = leaf_params(names)
        .signed_by(&key, issuer)
        .expect("sign leaf certificate");
    (vec![cert.der().clone()], pkcs8(&key))
}
