//! Identifiers that appear on the wire: node ids, document ids and change hashes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest string [`FromStr`] will try to decode as a bs58check id.
///
/// Base58 decoding is quadratic in the input length, and ids may come from
/// untrusted text (CLI arguments, HTTP requests), so absurd inputs are rejected
/// before decoding. 32 bytes + 4 checksum bytes never need more than 50 chars.
const MAX_ID_CHARS: usize = 64;

/// Why a string could not be parsed as a [`NodeId`] or [`DocumentId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseIdError {
    /// The string is far longer than any valid id; it was not decoded.
    #[error("id string is {len} characters long; at most {max} allowed")]
    TooLong {
        /// Length of the rejected string, in bytes.
        len: usize,
        /// The maximum accepted length.
        max: usize,
    },
    /// The string is not valid base58 (bad or non-ASCII character).
    #[error("invalid base58: {0}")]
    InvalidBase58(String),
    /// The base58 decoded, but the 4-byte checksum is missing or wrong.
    #[error("bad bs58check checksum")]
    BadChecksum,
    /// The checksum is fine but the id has the wrong number of bytes.
    #[error("wrong id length: expected {expected} bytes, got {actual}")]
    WrongLength {
        /// Bytes this kind of id has.
        expected: usize,
        /// Bytes the string decoded to.
        actual: usize,
    },
}

/// Decodes a bs58check string (no version byte) into exactly `N` bytes.
fn decode_bs58check<const N: usize>(s: &str) -> Result<[u8; N], ParseIdError> {
    if s.len() > MAX_ID_CHARS {
        return Err(ParseIdError::TooLong {
            len: s.len(),
            max: MAX_ID_CHARS,
        });
    }
    let bytes = bs58::decode(s)
        .with_check(None)
        .into_vec()
        .map_err(|e| match e {
            bs58::decode::Error::InvalidChecksum { .. } | bs58::decode::Error::NoChecksum => {
                ParseIdError::BadChecksum
            }
            other => ParseIdError::InvalidBase58(other.to_string()),
        })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| ParseIdError::WrongLength {
        expected: N,
        actual: bytes.len(),
    })
}

/// Shared implementation of the bs58check-displayed id types.
macro_rules! bs58_id {
    ($name:ident, $len:expr) => {
        impl $name {
            /// Number of bytes in this id.
            pub const LEN: usize = $len;

            /// Wraps raw id bytes.
            pub const fn from_bytes(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }

            /// The raw id bytes.
            pub const fn as_bytes(&self) -> &[u8; $len] {
                &self.0
            }

            /// The first 8 characters of the display form, for logs.
            pub fn short(&self) -> String {
                let mut s = self.to_string();
                // bs58 output is ASCII, so truncating at a byte index is safe.
                s.truncate(8);
                s
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&bs58::encode(&self.0).with_check().into_string())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.short())
            }
        }

        impl FromStr for $name {
            type Err = ParseIdError;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                decode_bs58check::<$len>(s).map(Self)
            }
        }

        impl From<[u8; $len]> for $name {
            fn from(bytes: [u8; $len]) -> Self {
                Self(bytes)
            }
        }
    };
}

/// A node's identity: its 32-byte Ed25519 public key.
///
/// Displayed as a bs58check string; `Debug` shows only the first 8 characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

bs58_id!(NodeId, 32);

/// A document's 16-byte id.
///
/// Displayed exactly like automerge-repo's `DocumentId`: the bs58check encoding
/// (double-SHA-256 checksum, no version byte) of the 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DocumentId(pub [u8; 16]);

bs58_id!(DocumentId, 16);

/// An Automerge change hash (SHA-256 of the change), kept here as plain bytes so
/// the wire crate does not depend on automerge.
///
/// Displayed as lowercase hex, as automerge does; `Debug` shows the first 4 bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChangeHash(pub [u8; 32]);

impl From<[u8; 32]> for ChangeHash {
    fn from(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for ChangeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ChangeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ChangeHash(")?;
        self.0[..4].iter().try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str(")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `DocumentId([0, 1, .., 15])` as automerge-repo (JS `bs58check.encode`) shows it,
    /// computed independently (base58 of bytes + first 4 bytes of sha256(sha256(bytes))).
    /// Pinned so an accidental change of the display format fails loudly.
    const DOC_0_TO_15: &str = "1Bhh3pU9gLXZiNDL6PEa1Gs9fh";

    fn doc_0_to_15() -> DocumentId {
        let mut bytes = [0u8; 16];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = i as u8;
        }
        DocumentId(bytes)
    }

    #[test]
    fn document_id_displays_as_bs58check_of_its_bytes() {
        let id = doc_0_to_15();
        let expected = bs58::encode(id.as_bytes()).with_check().into_string();
        assert_eq!(id.to_string(), expected);
        assert_eq!(id.to_string(), DOC_0_TO_15);
    }

    #[test]
    fn automerge_repo_style_document_id_parses() {
        let bytes = *b"\x9f\x1c\x02\xa7murmur-doc!\x00";
        let text = bs58::encode(bytes).with_check().into_string();
        let id: DocumentId = text.parse().unwrap();
        assert_eq!(id, DocumentId::from_bytes(bytes));
        assert_eq!(DOC_0_TO_15.parse::<DocumentId>().unwrap(), doc_0_to_15());
    }

    #[test]
    fn document_id_display_from_str_round_trips() {
        for seed in 0u8..=255 {
            let id = DocumentId([seed; 16]);
            assert_eq!(id.to_string().parse::<DocumentId>(), Ok(id));
        }
    }

    #[test]
    fn node_id_display_from_str_round_trips() {
        let id = NodeId([7; 32]);
        assert_eq!(id.to_string().parse::<NodeId>(), Ok(id));
    }

    #[test]
    fn document_id_with_bad_checksum_is_rejected() {
        let mut text = DOC_0_TO_15.to_string();
        // Swap the last character for another valid base58 character.
        let last = text.pop().unwrap();
        text.push(if last == 'z' { 'y' } else { 'z' });
        assert_eq!(text.parse::<DocumentId>(), Err(ParseIdError::BadChecksum));
    }

    #[test]
    fn too_short_for_a_checksum_is_a_checksum_error() {
        assert_eq!("1".parse::<DocumentId>(), Err(ParseIdError::BadChecksum));
        assert_eq!("".parse::<DocumentId>(), Err(ParseIdError::BadChecksum));
    }

    #[test]
    fn document_id_of_wrong_length_is_rejected() {
        let text = bs58::encode([1u8; 17]).with_check().into_string();
        assert_eq!(
            text.parse::<DocumentId>(),
            Err(ParseIdError::WrongLength {
                expected: 16,
                actual: 17
            })
        );
        // A valid node id is not a valid document id, and vice versa.
        let node = NodeId([3; 32]).to_string();
        assert!(matches!(
            node.parse::<DocumentId>(),
            Err(ParseIdError::WrongLength {
                expected: 16,
                actual: 32
            })
        ));
        assert!(matches!(
            DOC_0_TO_15.parse::<NodeId>(),
            Err(ParseIdError::WrongLength {
                expected: 32,
                actual: 16
            })
        ));
    }

    #[test]
    fn non_base58_characters_are_rejected() {
        // '0', 'O', 'I' and 'l' are not in the bitcoin base58 alphabet.
        assert!(matches!(
            "0OIl".parse::<DocumentId>(),
            Err(ParseIdError::InvalidBase58(_))
        ));
        assert!(matches!(
            "ünïcode".parse::<DocumentId>(),
            Err(ParseIdError::InvalidBase58(_))
        ));
    }

    #[test]
    fn absurdly_long_id_strings_are_rejected_without_decoding() {
        let text = "z".repeat(1 << 20);
        assert!(matches!(
            text.parse::<NodeId>(),
            Err(ParseIdError::TooLong { .. })
        ));
    }

    #[test]
    fn debug_and_short_show_first_eight_display_chars() {
        let id = NodeId([42; 32]);
        let display = id.to_string();
        assert_eq!(id.short(), &display[..8]);
        assert_eq!(format!("{id:?}"), format!("NodeId({})", &display[..8]));
        assert_eq!(format!("{:?}", doc_0_to_15()), "DocumentId(1Bhh3pU9)");
    }

    #[test]
    fn change_hash_shows_hex() {
        let mut bytes = [0u8; 32];
        bytes[0] = 0xab;
        bytes[3] = 0x01;
        let hash = ChangeHash(bytes);
        assert_eq!(format!("{hash:?}"), "ChangeHash(ab000001)");
        assert_eq!(hash.to_string().len(), 64);
        assert!(hash.to_string().starts_with("ab000001"));
    }
}
