//! Throwaway certificate authorities and server certificates for the TLS tests, written to a
//! temporary directory that goes away with them.

use std::path::PathBuf;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, date_time_ymd,
};
use tempfile::TempDir;

/// A CA that signs server certificates.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: TempDir,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        TestCa {
            issuer,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// This CA's certificate as a file, for `sslrootcert` / `…_TLS_CA_FILE`.
    pub fn file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, self.issuer.pem()).unwrap();
        path
    }

    /// This CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid now.
    pub fn server(&self, names: &[&str]) -> Issued {
        self.issue(names, false)
    }

    /// A server certificate for `names` that expired years ago.
    pub fn expired_server(&self, names: &[&str]) -> Issued {
        self.issue(names, true)
    }

    /// A client certificate, for servers that require one (mutual TLS).
    pub fn client(&self, name: &str) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn issue(&self, names: &[&str], expired: bool) -> Issued {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "sluice test server");
        // Redis's own cluster bus and replication links present it as a client certificate too.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(2021, 1, 1);
        }
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// What a TLS-only `redis-server` (or cluster node) needs, as files: its certificate and key,
/// the CA it trusts for client certificates, and a client certificate of that CA for the
/// connections the tests and Sluice make when the server requires one.
pub struct RedisTls {
    dir: TempDir,
    /// The server asks every client for a certificate of the CA (`--tls-auth-clients yes`).
    pub client_auth: bool,
}

impl RedisTls {
    /// Files for a server presenting `server`, trusting client certificates of `ca`.
    pub fn new(ca: &TestCa, server: &Issued, client_auth: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let client = ca.client("sluice");
        for (name, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.cert.clone()),
            ("server.key", server.key.clone()),
            ("client.pem", client.cert),
            ("client.key", client.key),
        ] {
            std::fs::write(dir.path().join(name), pem).unwrap();
        }
        RedisTls { dir, client_auth }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_owned()
    }

    /// `redis-server` arguments: TLS only on `port`, no plain-text port.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let mut args: Vec<String> = ["--port", "0", "--tls-port"].map(String::from).to_vec();
        args.push(port.to_string());
        for (flag, file) in [
            ("--tls-cert-file", "server.pem"),
            ("--tls-key-file", "server.key"),
            ("--tls-ca-cert-file", "ca.pem"),
        ] {
            args.push(flag.to_owned());
            args.push(self.file(file));
        }
        args.push("--tls-auth-clients".to_owned());
        args.push(if self.client_auth { "yes" } else { "no" }.to_owned());
        args
    }

    /// `redis-cli` arguments to reach such a server.
    pub fn cli_args(&self) -> Vec<String> {
        vec![
            "--tls".to_owned(),
            "--cacert".to_owned(),
            self.file("ca.pem"),
            "--cert".to_owned(),
            self.file("client.pem"),
            "--key".to_owned(),
            self.file("client.key"),
        ]
    }

    /// The `SLUICE__REDIS__TLS_*` settings that reach it with verification on.
    pub fn settings(&self) -> Vec<(String, String)> {
        let mut vars = vec![("SLUICE__REDIS__TLS_CA_FILE".to_owned(), self.file("ca.pem"))];
        if self.client_auth {
            vars.push((
                "SLUICE__REDIS__TLS_CERT_FILE".to_owned(),
                self.file("client.pem"),
            ));
            vars.push((
                "SLUICE__REDIS__TLS_KEY_FILE".to_owned(),
                self.file("client.key"),
            ));
        }
        vars
    }

    /// The same, for the tests' own `redis` client.
    pub fn certificates(&self) -> redis::TlsCertificates {
        let read = |name: &str| std::fs::read(self.dir.path().join(name)).unwrap();
        redis::TlsCertificates {
            client_tls: Some(redis::ClientTlsConfig {
                client_cert: read("client.pem"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.pem")),
        }
    }
}
