//! TLS for QUIC with pinned peer keys.
//!
//! Every node presents a self-signed certificate carrying its Ed25519 node
//! key. There is no certificate authority: a node accepts a peer only if the
//! key in the peer's certificate is on its allow-list, and the TLS handshake
//! proves the peer holds the matching private key. Both sides authenticate
//! (the server asks for a client certificate), so an unknown node can
//! neither connect nor be connected to, and gets no data.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use murmur_wire::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::Identity;

/// The ALPN protocol id of Murmur's QUIC connections.
pub const ALPN: &[u8] = b"murmur/1";
/// The server name every node dials: identity is checked by key, not name.
pub const SERVER_NAME: &str = "murmur.invalid";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): a
/// SEQUENCE of the algorithm id 1.3.101.112 and a 33-byte BIT STRING.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The certificate could not be made from the identity.
    #[error("could not make the node certificate: {0}")]
    Certificate(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The node ids this node accepts as peers. Shared by the verifiers of
/// every connection, so adding a key takes effect at the next handshake.
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    keys: Arc<RwLock<BTreeSet<NodeId>>>,
    /// Handshakes refused because the other side's key is not allowed.
    refused: Arc<std::sync::atomic::AtomicU64>,
}

impl AllowList {
    /// An allow-list of `keys`.
    pub fn new(keys: impl IntoIterator<Item = NodeId>) -> Self {
        AllowList {
            keys: Arc::new(RwLock::new(keys.into_iter().collect())),
            refused: Arc::default(),
        }
    }

    /// Handshakes refused so far because the other side's key was not on
    /// the list (as a server or as a client).
    pub fn refused(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// True if `node` may connect.
    pub fn allows(&self, node: &NodeId) -> bool {
        self.keys
            .read()
            .map(|keys| keys.contains(node))
            .unwrap_or(false)
    }

    /// Allows `node` from now on.
    pub fn insert(&self, node: NodeId) {
        if let Ok(mut keys) = self.keys.write() {
            keys.insert(node);
        }
    }

    /// Stops allowing `node` (existing connections are the caller's to
    /// close).
    pub fn remove(&self, node: &NodeId) {
        if let Ok(mut keys) = self.keys.write() {
            keys.remove(node);
        }
    }

    /// Every allowed id, in order.
    pub fn to_vec(&self) -> Vec<NodeId> {
        self.keys
            .read()
            .map(|keys| keys.iter().copied().collect())
            .unwrap_or_default()
    }
}

/// The node id carried by a certificate: its Ed25519 public key. `None` if
/// the certificate does not parse or holds another kind of key.
pub fn node_id_of(certificate: &CertificateDer<'_>) -> Option<NodeId> {
    let parsed = webpki::EndEntityCert::try_from(certificate).ok()?;
    let spki = parsed.subject_public_key_info();
    let key = spki.as_ref().strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    Some(NodeId(key.try_into().ok()?))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed certificate for `identity`, and its private key.
fn certificate(
    identity: &Identity,
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), TlsError> {
    let key_der = PrivatePkcs8KeyDer::from(identity.pkcs8_der().to_vec());
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&key_der, &rcgen::PKCS_ED25519)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    let certificate = params
        .self_signed(&key_pair)
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    Ok((certificate.der().clone(), PrivateKeyDer::Pkcs8(key_der)))
}

/// The TLS configuration a node accepts connections with.
pub fn server_config(
    identity: &Identity,
    allowed: AllowList,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedKeys {
        allowed,
        algorithms: provider.signature_verification_algorithms,
    });
    let (certificate, key) = certificate(identity)?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![certificate], key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// The TLS configuration a node dials with.
pub fn client_config(
    identity: &Identity,
    allowed: AllowList,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(PinnedKeys {
        allowed,
        algorithms: provider.signature_verification_algorithms,
    });
    let (certificate, key) = certificate(identity)?;
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![certificate], key)?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Node keys are Ed25519, so that is the only handshake signature accepted.
const ED25519_ONLY: [SignatureScheme; 1] = [SignatureScheme::ED25519];

/// QUIC is TLS 1.3 only: a TLS 1.2 signature is never valid here.
fn refuse_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

/// Accepts exactly the certificates whose key is on the allow-list.
#[derive(Debug)]
struct PinnedKeys {
    allowed: AllowList,
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedKeys {
    fn check(&self, certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let Some(node) = node_id_of(certificate) else {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::BadEncoding,
            ));
        };
        if self.allowed.allows(&node) {
            Ok(())
        } else {
            self.allowed
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(peer = %node.short(), "rejected a node that is not on the allow-list");
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }
}

impl ServerCertVerifier for PinnedKeys {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ED25519_ONLY.to_vec()
    }
}

impl ClientCertVerifier for PinnedKeys {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _certificate: &CertificateDer<'_>,
        _signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        refuse_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ED25519_ONLY.to_vec()
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_carries_the_node_id() {
        let identity = Identity::generate().unwrap();
        let (certificate, _) = certificate(&identity).unwrap();
        assert_eq!(node_id_of(&certificate), Some(identity.node_id()));
    }

    #[test]
    fn a_key_off_the_allow_list_is_refused() {
        let identity = Identity::generate().unwrap();
        let (certificate, _) = certificate(&identity).unwrap();
        let pinned = PinnedKeys {
            allowed: AllowList::new([NodeId([1; 32])]),
            algorithms: provider().signature_verification_algorithms,
        };
        assert!(pinned.check(&certificate).is_err());
        pinned.allowed.insert(identity.node_id());
        assert!(pinned.check(&certificate).is_ok());
    }
}
