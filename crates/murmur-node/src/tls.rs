//! HTTPS (and so `wss://`) for the HTTP API: rustls on ring, as QUIC
//! already uses. `murmur init --http` off loopback makes a self-signed
//! certificate whose fingerprint clients pin; an operator may give their
//! own (`http_tls_cert`, `http_tls_key`, PEM).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most handshakes in progress at once (more connections wait in the
/// kernel's backlog).
const MAX_HANDSHAKES: usize = 256;

/// The server side of TLS from a PEM certificate chain and private key.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let read = |path: &Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let certs = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("http_tls_cert {} is not PEM certificates", cert.display()))?;
    if certs.is_empty() {
        bail!("http_tls_cert {} holds no certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_slice(&read(key)?)
        .with_context(|| format!("http_tls_key {} is not a PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("http_tls_cert and http_tls_key do not make a usable pair")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A new self-signed certificate for `names` (DNS names or IP addresses):
/// its PEM, its key's PEM, and its SHA-256 fingerprint.
pub fn self_signed(names: Vec<String>) -> anyhow::Result<(String, String, String)> {
    let made = rcgen::generate_simple_self_signed(names).context("cannot make a certificate")?;
    let fingerprint = fingerprint(made.cert.der());
    Ok((
        made.cert.pem(),
        made.signing_key.serialize_pem(),
        fingerprint,
    ))
}

/// The SHA-256 fingerprint of a DER certificate, as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The fingerprint of the first certificate in the PEM file at `path`.
pub fn fingerprint_of(path: &Path) -> anyhow::Result<String> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let cert = CertificateDer::pem_slice_iter(&pem)
        .next()
        .context("no certificate")?
        .context("not PEM")?;
    Ok(fingerprint(&cert))
}

/// A TCP listener whose connections come out with their TLS handshake
/// done: what `axum::serve` takes. Handshakes run concurrently (a slow
/// client holds up no other), bounded in number and time.
pub struct TlsListener {
    accepted: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (done, accepted) = mpsc::channel(MAX_HANDSHAKES);
        let acceptor = TlsAcceptor::from(config);
        let permits = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let task = tokio::spawn(async move {
            loop {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let (stream, addr) = match tcp.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = done.send((tls, addr)).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%addr, %error, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener {
            accepted,
            local,
            task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accepting task is gone (it never ends on its own).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_loads_and_its_fingerprint_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, printed) =
            self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert).unwrap();
        std::fs::write(&key_path, key).unwrap();
        server_config(&cert_path, &key_path).unwrap();
        assert_eq!(fingerprint_of(&cert_path).unwrap(), printed);
        assert_eq!(printed.len(), 32 * 3 - 1);
        // A key that is not the certificate's is refused.
        let (_, other_key, _) = self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(&key_path, other_key).unwrap();
        assert!(server_config(&cert_path, &key_path).is_err());
        std::fs::write(&key_path, "not pem").unwrap();
        assert!(server_config(&cert_path, &key_path).is_err());
    }
}
