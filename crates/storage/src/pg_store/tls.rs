//! TLS to PostgreSQL (rustls): libpq's `sslmode` and `sslrootcert` URL parameters.
//!
//! tokio-postgres knows only `disable`, `prefer` and `require` (and no `sslrootcert`), so both
//! parameters are taken out of the URL here and the rest is handed to it; `verify-ca` and
//! `verify-full` ask it for `require` and this connector checks the certificate:
//!
//! | `sslmode` | encrypted | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | when the server offers TLS | not checked |
//! | `require` | always (refused otherwise) | not checked; with `sslrootcert`, as `verify-ca` (libpq) |
//! | `verify-ca` | always | signed by a CA of `sslrootcert` |
//! | `verify-full` | always | signed by a CA of `sslrootcert` and issued for the URL's host |
//!
//! `verify-ca`/`verify-full` need `sslrootcert` (a PEM file of CA certificates), read at
//! open. No client certificates, no channel binding (SCRAM without `-PLUS`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::{
    ring, verify_tls12_signature, verify_tls13_signature, CryptoProvider,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore,
    SignatureScheme,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A PostgreSQL URL split into what tokio-postgres parses and the TLS settings.
pub(super) struct PgUrl {
    /// The URL without `sslmode`/`sslrootcert`, `sslmode` re-added as tokio-postgres knows it.
    pub(super) rest: String,
    pub(super) mode: SslMode,
    pub(super) root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query. Errors never repeat
/// the URL (it may hold a password).
pub(super) fn split_url(url: &str) -> Result<PgUrl, String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // libpq's key=value form: tokio-postgres reads its sslmode (up to `require`)
        return Ok(PgUrl {
            rest: url.to_string(),
            mode: SslMode::Prefer,
            root_cert: None,
        });
    }
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let mut mode = SslMode::Prefer;
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "sslmode" => {
                mode = match decode(v)?.as_str() {
                    "disable" => SslMode::Disable,
                    "prefer" | "allow" => SslMode::Prefer,
                    "require" => SslMode::Require,
                    "verify-ca" => SslMode::VerifyCa,
                    "verify-full" => SslMode::VerifyFull,
                    other => {
                        return Err(format!(
                            "sslmode \"{other}\" is not one of disable, prefer, require, \
                             verify-ca, verify-full"
                        ))
                    }
                }
            }
            "sslrootcert" => root_cert = Some(decode(v)?),
            _ => kept.push(pair),
        }
    }
    if mode == SslMode::Require && root_cert.is_some() {
        mode = SslMode::VerifyCa;
    }
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(
            "sslmode verify-ca and verify-full need sslrootcert (a PEM file of the CA \
             certificates that sign the server's certificate)"
                .into(),
        );
    }
    kept.push(match mode {
        SslMode::Disable => "sslmode=disable",
        SslMode::Prefer => "sslmode=prefer",
        _ => "sslmode=require",
    });
    Ok(PgUrl {
        rest: format!("{base}?{}", kept.join("&")),
        mode,
        root_cert,
    })
}

/// A percent-decoded URL parameter value.
fn decode(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("a bad percent escape in sslmode or sslrootcert")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "sslrootcert is not UTF-8".to_string())
}

/// The connector for a URL's TLS settings (reads `sslrootcert`).
pub(super) fn connector(url: &PgUrl) -> Result<MakeRustls, String> {
    let provider = Arc::new(ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match url.mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(NoCheck(provider.clone()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = url.root_cert.as_deref().unwrap_or_default();
            let pem = std::fs::read(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("sslrootcert {path}: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            }
            if roots.is_empty() {
                return Err(format!("sslrootcert {path}: no certificate in it"));
            }
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| format!("sslrootcert {path}: {e}"))?;
            Arc::new(CaCheck {
                inner: webpki,
                check_name: url.mode == SslMode::VerifyFull,
            })
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustls(Arc::new(config)))
}

/// `MakeTlsConnect` over tokio-rustls.
#[derive(Clone)]
pub(super) struct MakeRustls(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = io::Error;

    /// `domain` is empty for a Unix socket, where PostgreSQL never offers TLS (so `prefer`
    /// goes on unencrypted): a name that is not one fails only if a handshake is attempted.
    fn make_tls_connect(&mut self, domain: &str) -> io::Result<RustlsConnect> {
        Ok(RustlsConnect(
            self.0.clone(),
            ServerName::try_from(domain.to_string()).ok(),
        ))
    }
}

pub(super) struct RustlsConnect(Arc<ClientConfig>, Option<ServerName<'static>>);

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.0);
        Box::pin(async move {
            let name = self.1.ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "not a valid host name for TLS")
            })?;
            connector
                .connect(name, stream)
                .await
                .map(|s| RustlsStream(Box::new(s)))
        })
    }
}

pub(super) struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// `prefer`/`require`: any certificate (the handshake's signatures are still checked).
#[derive(Debug)]
struct NoCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCheck {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (chain only) and `verify-full` (chain and host name).
#[derive(Debug)]
struct CaCheck {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for CaCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            // the chain is checked before the name: a name error means the chain is good
            Err(TlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url() {
        let u = split_url("postgres://u:pw@h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x")
            .unwrap();
        assert_eq!(u.mode, SslMode::VerifyFull);
        assert_eq!(u.root_cert.as_deref(), Some("/etc/ca.pem"));
        assert_eq!(
            u.rest,
            "postgres://u:pw@h/db?application_name=x&sslmode=require"
        );
        let u = split_url("postgres://h/db").unwrap();
        assert_eq!(
            (u.mode, u.rest.as_str()),
            (SslMode::Prefer, "postgres://h/db?sslmode=prefer")
        );
        let u = split_url("postgres://h/db?sslmode=require&sslrootcert=ca.pem").unwrap();
        assert_eq!(
            u.mode,
            SslMode::VerifyCa,
            "libpq: require with a root cert verifies the CA"
        );
        let e = split_url("postgres://u:hunter2@h/db?sslmode=verify-full")
            .err()
            .unwrap();
        assert!(e.contains("sslrootcert") && !e.contains("hunter2"), "{e}");
        let e = split_url("postgres://u:hunter2@h/db?sslmode=sometimes")
            .err()
            .unwrap();
        assert!(e.contains("sometimes") && !e.contains("hunter2"), "{e}");
    }
}
