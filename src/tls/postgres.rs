//! TLS to PostgreSQL, with libpq's `sslmode` semantics, over rustls (no OpenSSL to build or link).
//!
//! `SLUICE__POSTGRES__URL` may carry `sslmode`, `sslrootcert`, `sslcert` and `sslkey` as libpq
//! reads them; `SLUICE__POSTGRES__TLS_CA_FILE`, `…_TLS_CERT_FILE` and `…_TLS_KEY_FILE` give the
//! same files where the URL names none. The driver itself knows only `disable`, `prefer` and
//! `require`, so these parameters are read here and the rest of the URL is handed on.
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |-----------|-----------|----------------------------|
//! | `disable` | never | — |
//! | `prefer` (the default, as in libpq) | when the server offers it | no |
//! | `require` | always | no (as libpq: with a CA file given, like `verify-ca`) |
//! | `verify-ca` | always | signed by the CA (file, else the system's roots) |
//! | `verify-full` | always | signed by the CA, and issued for the host connected to |

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

pub use super::TlsFiles;

/// What connections are made with: rustls, configured for the target's mode. (With `disable`
/// the driver never starts TLS, whatever the connector.)
pub type Connector = MakeRustlsConnect;

/// libpq's `sslmode`, all of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            // libpq's `allow` tries plain first: never what a service wants, so say so.
            other => Err(format!(
                "sslmode={other} is not supported; use disable, prefer, require, verify-ca or verify-full"
            )),
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        })
    }
}

/// A PostgreSQL URL taken apart: the driver's configuration, and how to secure it.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub mode: SslMode,
    pub files: TlsFiles,
}

impl Target {
    /// Reads `url`; files named in it win over `fallback` (the `TLS_*_FILE` settings).
    pub fn parse(url: &str, fallback: &TlsFiles) -> Result<Self, String> {
        let mut mode = SslMode::Prefer;
        let mut files = TlsFiles::default();
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = || percent_decode(value);
            match key {
                "sslmode" => mode = decoded()?.parse()?,
                "sslrootcert" => files.ca = Some(PathBuf::from(decoded()?)),
                "sslcert" => files.cert = Some(PathBuf::from(decoded()?)),
                "sslkey" => files.key = Some(PathBuf::from(decoded()?)),
                _ => kept.push(pair),
            }
        }
        let rest = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| format!("is not a PostgreSQL URL ({e})"))?;
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        files.ca = files.ca.or_else(|| fallback.ca.clone());
        files.cert = files.cert.or_else(|| fallback.cert.clone());
        files.key = files.key.or_else(|| fallback.key.clone());
        if files.cert.is_some() != files.key.is_some() {
            return Err("a client certificate needs its key, and a key its certificate".into());
        }
        // libpq: `require` with a root certificate given behaves like `verify-ca`.
        if mode == SslMode::Require && files.ca.is_some() {
            mode = SslMode::VerifyCa;
        }
        Ok(Target {
            config,
            mode,
            files,
        })
    }

    /// The connector for this target's mode and files. Reads the files: a missing or
    /// unreadable one is an error naming it.
    pub fn connector(&self) -> Result<MakeRustlsConnect, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(ServerCheck {
                provider,
                chain: None,
            }),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(self.roots()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| format!("TLS: {e}"))?;
                if self.mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(ServerCheck {
                        provider,
                        chain: Some(webpki),
                    })
                }
            }
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = super::client_auth(builder, &self.files)?;
        Ok(MakeRustlsConnect::new(config))
    }

    /// The CA file's certificates, or the system's trusted roots (of which there must be some).
    fn roots(&self) -> Result<RootCertStore, String> {
        let roots = super::roots(self.files.ca.as_deref())?;
        if roots.is_empty() {
            return Err(format!(
                "sslmode={} needs CA certificates: give SLUICE__POSTGRES__TLS_CA_FILE \
                 (or sslrootcert), or install the system's (ca-certificates)",
                self.mode
            ));
        }
        Ok(roots)
    }
}

/// `%XX` escapes of a URL query value.
fn percent_decode(value: &str) -> Result<String, String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad %-escape in {value:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{value:?} is not UTF-8"))
}

/// The server-certificate check of `prefer`, `require` and `verify-ca`. With no `chain`
/// (`prefer`, `require`) any certificate is accepted: the connection is encrypted, the
/// certificate not checked, as libpq means these modes. With a `chain` (`verify-ca`) the
/// certificate must chain to a trusted CA and be valid now, whatever host name it was issued
/// for. Either way the handshake's signatures are verified, so the session key belongs to
/// whoever holds the certificate's key.
#[derive(Debug)]
struct ServerCheck {
    provider: Arc<rustls::crypto::CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_up_their_tls_parameters_and_keep_the_rest() {
        let t = Target::parse(
            "postgres://u:p@db.example.com:5432/sluice?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
            &TlsFiles::default(),
        )
        .unwrap();
        assert_eq!(t.mode, SslMode::VerifyFull);
        assert_eq!(t.files.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.config.get_application_name(), Some("x"));
        assert_eq!(t.config.get_dbname(), Some("sluice"));

        let default = Target::parse("postgres://u@h/db", &TlsFiles::default()).unwrap();
        assert_eq!(default.mode, SslMode::Prefer);

        // The settings' files apply where the URL names none; require with a CA is verify-ca.
        let fallback = TlsFiles {
            ca: Some("/ca.pem".into()),
            ..TlsFiles::default()
        };
        let t = Target::parse("postgres://u@h/db?sslmode=require", &fallback).unwrap();
        assert_eq!(
            (t.mode, t.files.ca),
            (SslMode::VerifyCa, Some("/ca.pem".into()))
        );

        for bad in [
            "postgres://u@h/db?sslmode=allow",
            "postgres://u@h/db?sslmode=sometimes",
            "postgres://u@h/db?sslcert=/c.pem",
            "postgres://u@h/db?sslrootcert=%zz",
        ] {
            assert!(Target::parse(bad, &TlsFiles::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn verify_modes_read_their_files_and_say_which_is_missing() {
        let t = Target::parse(
            "postgres://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            &TlsFiles::default(),
        )
        .unwrap();
        let err = t.connector().err().unwrap();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }
}
