//! Encryption at rest for important and core chunks (issue 11; decision 0021): the key file, the
//! data keys it wraps, and the AEAD that seals a chunk to its place.
//!
//! - **Master key**: 32 random bytes in a file of its own (`historian.key`), mode 0600, kept
//!   apart from the data. It never encrypts data: it wraps the data keys.
//! - **Data keys**: 32 random bytes each, numbered from 1, stored wrapped (AES-256-GCM under the
//!   master key, their id as associated data) next to the chunks. A chunk names its data key by
//!   id (`enc`, 0 = plaintext), so rotating the master key rewraps a few data keys and rotating
//!   a data key never touches old chunks.
//! - **Chunks**: AES-256-GCM with a fresh random 96-bit nonce per seal. Random nonces stay safe
//!   for 2^32 seals per key (NIST SP 800-38D); a data key is retired after [`MAX_SEALS`], far
//!   below that. The associated data binds the ciphertext to its point, chunk, level, category
//!   and time range, so a ciphertext copied to another place fails to open.
//!
//! AES-256-GCM and randomness come from `ring`, the provider rustls already brings.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::model::{Category, Level};

/// Seals per data key before the writer starts a new one (2^28, well under the 2^32 bound).
pub(crate) const MAX_SEALS: u64 = 1 << 28;

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// What can go wrong with keys and sealed data; each names the file or the chunk.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("historian key {path} is missing: create it with `edge-agent init -c <config>` (it is kept apart from the data, mode 0600)")]
    KeyMissing { path: PathBuf },
    #[error("historian key {path} is readable or writable by others (mode {mode:o}): run `chmod 600 {path}`; the agent does not start with an exposed key")]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("historian key {path}: {reason}")]
    KeyInvalid { path: PathBuf, reason: String },
    #[error("historian key {path} already exists: a new key would make the data sealed with it unreadable")]
    KeyExists { path: PathBuf },
    #[error("historian key {path}: {source}")]
    KeyIo {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Wrong key, or data altered or moved: nothing of it is returned.
    #[error("{what} does not open with this key (authentication tag check failed): wrong key, or the data was altered or moved")]
    Unopenable { what: String },
    #[error("no randomness from the operating system")]
    Random,
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn random<const N: usize>(rng: &SystemRandom) -> Result<[u8; N], CryptoError> {
    let mut b = [0u8; N];
    rng.fill(&mut b).map_err(|_| CryptoError::Random)?;
    Ok(b)
}

/// The key in the key file: wraps the data keys, encrypts nothing else.
pub struct MasterKey {
    key: LessSafeKey,
    /// Public identifier (a hash of the key), so a wrong key is named as such.
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl MasterKey {
    fn from_bytes(bytes: &[u8; KEY_LEN]) -> Self {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"edge-agent historian key id\0".as_slice(), bytes].concat(),
        );
        let id = hex(&digest.as_ref()[..8]);
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte key is valid for AES-256"),
        );
        Self { key, id }
    }

    /// The key's public identifier.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Creates a new key file at `path` (never replacing one), mode 0600 from the first byte.
    pub fn create(path: &Path) -> Result<Self, CryptoError> {
        let bytes: [u8; KEY_LEN] = random(&SystemRandom::new())?;
        let io = |source| CryptoError::KeyIo {
            path: path.to_owned(),
            source,
        };
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => CryptoError::KeyExists {
                    path: path.to_owned(),
                },
                _ => io(e),
            })?;
        f.write_all(format!("{}\n", hex(&bytes)).as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(Self::from_bytes(&bytes))
    }

    /// Loads the key file at `path`: it must exist, be a regular file that only its owner can
    /// read or write, and hold 64 hex digits.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(CryptoError::KeyMissing {
                    path: path.to_owned(),
                })
            }
            Err(source) => {
                return Err(CryptoError::KeyIo {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        let invalid = |reason: &str| CryptoError::KeyInvalid {
            path: path.to_owned(),
            reason: reason.to_owned(),
        };
        if !meta.is_file() {
            return Err(invalid("is not a regular file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::KeyExposed {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| CryptoError::KeyIo {
            path: path.to_owned(),
            source,
        })?;
        let digits = text.trim();
        if digits.len() != 2 * KEY_LEN || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid("must hold 64 hex digits (a 256-bit key)"));
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16)
                .map_err(|_| invalid("must hold 64 hex digits (a 256-bit key)"))?;
        }
        Ok(Self::from_bytes(&bytes))
    }
}

/// A data key: seals chunks. Stored only wrapped by the master key.
pub struct DataKey {
    id: u32,
    key: LessSafeKey,
    raw: [u8; KEY_LEN],
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    fn from_raw(id: u32, raw: [u8; KEY_LEN]) -> Self {
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &raw).expect("a 32-byte key is valid for AES-256"),
        );
        Self { id, key, raw }
    }

    /// A fresh data key numbered `id` (ids start at 1: 0 means plaintext).
    pub fn generate(id: u32) -> Result<Self, CryptoError> {
        Ok(Self::from_raw(id, random(&SystemRandom::new())?))
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key sealed under `master`, bound to its id.
    pub fn wrap(&self, master: &MasterKey) -> Result<Vec<u8>, CryptoError> {
        seal_with(&master.key, &self.id.to_be_bytes(), &self.raw)
    }

    /// The data key `id` from its wrapped form; fails if `master` is not the key that wrapped
    /// it or the bytes were altered.
    pub fn unwrap(master: &MasterKey, id: u32, wrapped: &[u8]) -> Result<Self, CryptoError> {
        let raw = open_with(&master.key, &id.to_be_bytes(), wrapped).map_err(|()| {
            CryptoError::Unopenable {
                what: format!("data key {id} (master key {})", master.id()),
            }
        })?;
        let raw: [u8; KEY_LEN] = raw.try_into().map_err(|_| CryptoError::Unopenable {
            what: format!("data key {id}"),
        })?;
        Ok(Self::from_raw(id, raw))
    }

    /// Seals `plain` to its place: the result is `nonce || ciphertext || tag`.
    pub fn seal(&self, place: &ChunkPlace, plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_with(&self.key, &place.bytes(), plain)
    }

    /// Opens what [`seal`](Self::seal) made for the same place; anything else fails.
    pub fn open(&self, place: &ChunkPlace, sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.key, &place.bytes(), sealed).map_err(|()| CryptoError::Unopenable {
            what: format!(
                "chunk {} of point {} (data key {})",
                place.chunk_seq, place.point_id, self.id
            ),
        })
    }
}

impl DataKey {
    /// Seals a record that is not a chunk (an outbox entry, say). `aad` must name the record's
    /// place with a prefix of its own, distinct from `EAC1`, so a record never opens as a chunk.
    pub fn seal_record(&self, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_with(&self.key, aad, plain)
    }

    /// Opens what [`seal_record`](Self::seal_record) made with the same `aad`.
    pub fn open_record(
        &self,
        aad: &[u8],
        sealed: &[u8],
        what: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.key, aad, sealed).map_err(|()| CryptoError::Unopenable {
            what: format!("{what} (data key {})", self.id),
        })
    }
}

/// Where a sealed chunk belongs: its associated data. A ciphertext opens only here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlace {
    pub point_id: u32,
    pub chunk_seq: u32,
    pub level: Level,
    pub category: Category,
    pub min_ts: i64,
    pub max_ts: i64,
}

impl ChunkPlace {
    fn bytes(&self) -> [u8; 32] {
        let mut b = [0u8; 32];
        b[..4].copy_from_slice(b"EAC1");
        b[4..8].copy_from_slice(&self.point_id.to_be_bytes());
        b[8..12].copy_from_slice(&self.chunk_seq.to_be_bytes());
        b[12] = u8::try_from(self.level.index()).unwrap_or(u8::MAX);
        b[13] = u8::try_from(
            Category::ALL
                .iter()
                .position(|&c| c == self.category)
                .unwrap_or(usize::from(u8::MAX)),
        )
        .unwrap_or(u8::MAX);
        b[16..24].copy_from_slice(&self.min_ts.to_be_bytes());
        b[24..32].copy_from_slice(&self.max_ts.to_be_bytes());
        b
    }
}

fn seal_with(key: &LessSafeKey, aad: &[u8], plain: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce: [u8; NONCE_LEN] = random(&SystemRandom::new())?;
    let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plain);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut out[NONCE_LEN..],
        )
        .map_err(|_| CryptoError::Random)?;
    out.extend_from_slice(tag.as_ref());
    Ok(out)
}

fn open_with(key: &LessSafeKey, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, ()> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(());
    }
    let (nonce, rest) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| ())?;
    let mut buf = rest.to_vec();
    let plain = key
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .map_err(|_| ())?;
    let n = plain.len();
    buf.truncate(n);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> ChunkPlace {
        ChunkPlace {
            point_id: 7,
            chunk_seq: 3,
            level: Level::Core,
            category: Category::RdDesign,
            min_ts: 1_000,
            max_ts: 2_000,
        }
    }

    #[test]
    fn a_chunk_opens_only_with_its_key_and_in_its_place() {
        let key = DataKey::generate(1).expect("key");
        let plain = b"recipe 812.5 degC soak";
        let sealed = key.seal(&place(), plain).expect("seal");
        assert!(
            !sealed.windows(5).any(|w| w == b"812.5"),
            "the plaintext is not in the ciphertext"
        );
        assert_eq!(key.open(&place(), &sealed).expect("open"), plain);
        // Moved to another chunk, point, level or time range: it does not open.
        for moved in [
            ChunkPlace {
                chunk_seq: 4,
                ..place()
            },
            ChunkPlace {
                point_id: 8,
                ..place()
            },
            ChunkPlace {
                level: Level::Important,
                ..place()
            },
            ChunkPlace {
                max_ts: 2_001,
                ..place()
            },
        ] {
            assert!(matches!(
                key.open(&moved, &sealed),
                Err(CryptoError::Unopenable { .. })
            ));
        }
        // Another key, or one flipped bit: it does not open either.
        let other = DataKey::generate(1).expect("key");
        assert!(other.open(&place(), &sealed).is_err());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(key.open(&place(), &flipped).is_err());
        // Two seals of the same chunk differ (fresh nonces).
        assert_ne!(key.seal(&place(), plain).expect("seal"), sealed);
    }

    #[test]
    fn data_keys_unwrap_only_under_their_master_key_and_id() {
        let dir = tempfile::tempdir().expect("tmp");
        let master = MasterKey::create(&dir.path().join("k")).expect("create");
        let data = DataKey::generate(5).expect("key");
        let wrapped = data.wrap(&master).expect("wrap");
        let again = DataKey::unwrap(&master, 5, &wrapped).expect("unwrap");
        let sealed = data.seal(&place(), b"x").expect("seal");
        assert_eq!(again.open(&place(), &sealed).expect("open"), b"x");
        assert!(
            DataKey::unwrap(&master, 6, &wrapped).is_err(),
            "bound to its id"
        );
        let other = MasterKey::create(&dir.path().join("k2")).expect("create");
        let err = DataKey::unwrap(&other, 5, &wrapped).expect_err("wrong master key");
        assert!(err.to_string().contains(other.id()), "{err}");
    }

    #[test]
    fn the_key_file_is_created_private_and_never_replaced() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("historian.key");
        let created = MasterKey::create(&path).expect("create");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(MasterKey::load(&path).expect("load").id(), created.id());
        assert!(matches!(
            MasterKey::create(&path),
            Err(CryptoError::KeyExists { .. })
        ));
        assert_eq!(
            MasterKey::load(&path).expect("still the same").id(),
            created.id()
        );
    }

    #[test]
    fn an_exposed_missing_or_malformed_key_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("historian.key");
        let missing = MasterKey::load(&path).expect_err("missing");
        assert!(missing.to_string().contains("edge-agent init"), "{missing}");
        MasterKey::create(&path).expect("create");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let exposed = MasterKey::load(&path).expect_err("exposed");
        assert!(exposed.to_string().contains("chmod 600"), "{exposed}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        std::fs::write(&path, "not a key\n").expect("write");
        let invalid = MasterKey::load(&path).expect_err("malformed");
        assert!(invalid.to_string().contains("64 hex digits"), "{invalid}");
    }
}
