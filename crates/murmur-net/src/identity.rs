//! A node's identity: an Ed25519 key pair kept in its data directory.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use murmur_wire::NodeId;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

/// Why an identity could not be made, read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The key file could not be read or written.
    #[error("identity file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The key file does not hold an Ed25519 PKCS#8 key.
    #[error("identity file {path} does not hold an Ed25519 PKCS#8 key: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What ring said.
        reason: String,
    },
    /// The system random source failed.
    #[error("could not generate a key: {0}")]
    Generate(String),
}

/// An Ed25519 key pair. Its public key is the node id and, later, its TLS
/// identity.
#[derive(Clone)]
pub struct Identity {
    pkcs8: Vec<u8>,
    node_id: NodeId,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("Identity")
            .field("node_id", &self.node_id)
            .finish()
    }
}

/// The file name of the key in a data directory.
pub const IDENTITY_FILE: &str = "node.key";

impl Identity {
    /// A fresh key pair from the system random source.
    pub fn generate() -> Result<Self, IdentityError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|e| IdentityError::Generate(e.to_string()))?;
        Self::from_pkcs8(document.as_ref().to_vec()).map_err(IdentityError::Generate)
    }

    /// The key pair whose 32-byte secret is `seed`: the same node id every
    /// time. For simulations and tests that must replay a run; a real
    /// node's key comes from [`Identity::generate`].
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, IdentityError> {
        // PKCS#8 v1 (RFC 8410) of an Ed25519 private key: a fixed header,
        // then the seed.
        const HEADER: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut pkcs8 = HEADER.to_vec();
        pkcs8.extend_from_slice(&seed);
        Self::from_pkcs8(pkcs8).map_err(IdentityError::Generate)
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pkcs8).map_err(|e| e.to_string())?;
        let public: [u8; 32] = pair
            .public_key()
            .as_ref()
            .try_into()
            .map_err(|_| "public key is not 32 bytes".to_string())?;
        Ok(Identity {
            pkcs8,
            node_id: NodeId(public),
        })
    }

    /// Reads the identity in `dir`, or creates and saves one if there is
    /// none. Returns it and whether it was created.
    pub fn load_or_create(dir: &Path) -> Result<(Self, bool), IdentityError> {
        let path = dir.join(IDENTITY_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let identity = Self::from_pkcs8(bytes)
                    .map_err(|reason| IdentityError::Invalid { path, reason })?;
                Ok((identity, false))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate()?;
                identity.save(&path)?;
                Ok((identity, true))
            }
            Err(source) => Err(IdentityError::Io { path, source }),
        }
    }

    /// Writes the key to `path`, readable by its owner only, atomically
    /// (a temporary file renamed into place).
    pub fn save(&self, path: &Path) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        let temporary = path.with_extension("key.tmp");
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary).map_err(io)?;
        file.write_all(&self.pkcs8).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&temporary, path).map_err(io)
    }

    /// The node id: the public key.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// The private key as PKCS#8 DER.
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_created_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let (first, created) = Identity::load_or_create(dir.path()).unwrap();
        assert!(created);
        let (second, created) = Identity::load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(first.node_id(), second.node_id());
    }

    #[test]
    fn a_garbage_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(IDENTITY_FILE), b"not a key").unwrap();
        assert!(matches!(
            Identity::load_or_create(dir.path()),
            Err(IdentityError::Invalid { .. })
        ));
    }

    #[test]
    fn a_seed_gives_one_key_and_it_signs_certificates() {
        let one = Identity::from_seed([7; 32]).unwrap();
        let again = Identity::from_seed([7; 32]).unwrap();
        let other = Identity::from_seed([8; 32]).unwrap();
        assert_eq!(one.node_id(), again.node_id());
        assert_ne!(one.node_id(), other.node_id());
        // The same key as ring derives from the seed directly.
        let pair = Ed25519KeyPair::from_seed_unchecked(&[7; 32]).unwrap();
        assert_eq!(pair.public_key().as_ref(), &one.node_id().0);
        assert!(crate::tls::server_config(&one, crate::tls::AllowList::new([])).is_ok());
    }
}
