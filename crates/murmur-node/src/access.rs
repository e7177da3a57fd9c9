//! Who may sync what: the access a sync client's token gives, and the
//! node's store of client tokens (`murmur token create|list|revoke`,
//! `POST/GET/DELETE /tokens`).
//!
//! A client token is `ID.SECRET`. The node keeps its id, its scope and a
//! SHA-256 of its secret (never the secret) in `tokens.json` in the data
//! directory, written atomically; revoking one removes it and closes the
//! sessions that use it. The operator's `http_token` gives full access.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use murmur::DocumentId;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// The file, in the data directory, that holds the client tokens.
pub const TOKENS_FILE: &str = "tokens.json";
/// The most client tokens a node keeps.
pub const MAX_TOKENS: usize = 10_000;
/// The most documents one token may name.
pub const MAX_TOKEN_DOCS: usize = 10_000;

/// What a sync client may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// The token it presented (`None`: the operator's token, or no token
    /// on an open loopback API).
    pub token: Option<String>,
    /// The documents it may read (`None`: every document).
    pub docs: Option<BTreeSet<DocumentId>>,
    /// Whether its changes are refused.
    pub read_only: bool,
}

impl Access {
    /// Everything: read, change and create any document.
    pub fn full() -> Self {
        Access {
            token: None,
            docs: None,
            read_only: false,
        }
    }

    /// Whether it may read `doc` (learn that it exists).
    pub fn may_read(&self, doc: DocumentId) -> bool {
        self.docs.as_ref().is_none_or(|docs| docs.contains(&doc))
    }

    /// Whether it may change `doc`.
    pub fn may_write(&self, doc: DocumentId) -> bool {
        !self.read_only && self.may_read(doc)
    }

    /// Whether it may create documents (only a token for every document
    /// that is not read-only).
    pub fn may_create(&self) -> bool {
        !self.read_only && self.docs.is_none()
    }
}

/// A stored client token (its secret only as a hash).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// Its id: the part before the dot, which `revoke` takes.
    pub id: String,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// The documents it may sync (`None`: all).
    pub docs: Option<Vec<String>>,
    /// Whether its changes are refused.
    pub read_only: bool,
    /// When it was made, seconds since the Unix epoch.
    pub created: u64,
}

impl TokenRecord {
    fn access(&self) -> Access {
        Access {
            token: Some(self.id.clone()),
            docs: self
                .docs
                .as_ref()
                .map(|docs| docs.iter().filter_map(|doc| doc.parse().ok()).collect()),
            read_only: self.read_only,
        }
    }
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The tokens file cannot be read or written.
    #[error("the tokens file {path}: {reason}")]
    File {
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Too many tokens, or documents in one.
    #[error("{0}")]
    TooMany(String),
    /// No token with that id.
    #[error("no token {0}")]
    Unknown(String),
}

/// The node's client tokens, as stored in [`TOKENS_FILE`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Tokens {
    tokens: BTreeMap<String, TokenRecord>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

impl Tokens {
    /// Reads the tokens of the node whose data directory is `dir` (none
    /// yet if the file does not exist).
    pub fn load(dir: &Path) -> Result<Self, TokenError> {
        let path = dir.join(TOKENS_FILE);
        let failed = |reason: String| TokenError::File {
            path: path.clone(),
            reason,
        };
        let mut tokens = match std::fs::read(&path) {
            Ok(bytes) if bytes.len() > 64 * 1024 * 1024 => {
                return Err(failed("larger than 64 MiB".into()))
            }
            Ok(bytes) => serde_json::from_slice::<Tokens>(&bytes)
                .map_err(|error| failed(format!("not a tokens file: {error}")))?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Tokens::default(),
            Err(error) => return Err(failed(error.to_string())),
        };
        tokens.path = Some(path);
        Ok(tokens)
    }

    /// The access `presented` gives, if it is a live token here.
    pub fn check(&self, presented: &str) -> Option<Access> {
        let (id, secret) = presented.split_once('.')?;
        let record = self.tokens.get(id)?;
        let hash = sha256_hex(secret.as_bytes());
        bool::from(hash.as_bytes().ct_eq(record.secret_sha256.as_bytes())).then(|| record.access())
    }

    /// Makes a token for `docs` (all if `None`), read-only or not, stores
    /// it, and returns it whole (the only time its secret is known) with
    /// its record.
    pub fn create(
        &mut self,
        docs: Option<Vec<DocumentId>>,
        read_only: bool,
    ) -> Result<(String, TokenRecord), TokenError> {
        if self.tokens.len() >= MAX_TOKENS {
            return Err(TokenError::TooMany(format!(
                "this node already keeps {MAX_TOKENS} tokens; revoke some"
            )));
        }
        if docs
            .as_ref()
            .is_some_and(|docs| docs.len() > MAX_TOKEN_DOCS)
        {
            return Err(TokenError::TooMany(format!(
                "a token names at most {MAX_TOKEN_DOCS} documents"
            )));
        }
        let mut random = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        let id = bs58::encode(&random[..6]).into_string();
        let secret = bs58::encode(&random[6..]).into_string();
        let record = TokenRecord {
            id: id.clone(),
            secret_sha256: sha256_hex(secret.as_bytes()),
            docs: docs.map(|docs| docs.iter().map(ToString::to_string).collect()),
            read_only,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
        };
        self.tokens.insert(id.clone(), record.clone());
        if let Err(error) = self.save() {
            self.tokens.remove(&id);
            return Err(error);
        }
        Ok((format!("{id}.{secret}"), record))
    }

    /// Removes token `id`.
    pub fn revoke(&mut self, id: &str) -> Result<(), TokenError> {
        let Some(record) = self.tokens.remove(id) else {
            return Err(TokenError::Unknown(id.to_string()));
        };
        if let Err(error) = self.save() {
            self.tokens.insert(id.to_string(), record);
            return Err(error);
        }
        Ok(())
    }

    /// Every token's record, by id.
    pub fn list(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }

    /// Writes the file: a new file, synced, renamed over the old one, so a
    /// crash leaves one or the other whole. Small (a record is ~200
    /// bytes), and only on create and revoke.
    fn save(&self) -> Result<(), TokenError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let failed = |error: std::io::Error| TokenError::File {
            path: path.clone(),
            reason: error.to_string(),
        };
        let bytes = serde_json::to_vec_pretty(self).expect("tokens serialize");
        let temporary = path.with_extension("json.new");
        {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&temporary).map_err(failed)?;
            file.write_all(&bytes).map_err(failed)?;
            file.sync_all().map_err(failed)?;
        }
        std::fs::rename(&temporary, path).map_err(failed)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(failed)?;
        }
        Ok(())
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_checked_scoped_revoked_and_kept_across_a_reload() {
        let dir = tempfile::tempdir().unwrap();
        let doc = DocumentId([3; 16]);
        let other = DocumentId([4; 16]);
        let mut tokens = Tokens::load(dir.path()).unwrap();
        let (token, record) = tokens.create(Some(vec![doc]), true).unwrap();
        let access = tokens.check(&token).expect("a live token");
        assert!(access.may_read(doc) && !access.may_read(other));
        assert!(!access.may_write(doc) && !access.may_create());
        // The stored file holds the hash, never the secret.
        let stored = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        let secret = token.split_once('.').unwrap().1;
        assert!(!stored.contains(secret));
        assert!(tokens.check(&format!("{}.wrong", record.id)).is_none());
        assert!(tokens.check("no-dot").is_none());

        let reloaded = Tokens::load(dir.path()).unwrap();
        assert_eq!(reloaded.check(&token), Some(access));
        let mut reloaded = reloaded;
        reloaded.revoke(&record.id).unwrap();
        assert!(reloaded.check(&token).is_none());
        assert!(Tokens::load(dir.path()).unwrap().check(&token).is_none());
        assert!(matches!(
            reloaded.revoke(&record.id),
            Err(TokenError::Unknown(_))
        ));
    }
}
