//! The historian's data keys (decision 0021): stored wrapped in the `keys` table, unwrapped with
//! the master key when the historian opens, one of them current for new seals.
//!
//! The writer and its tail share one [`SharedRing`] (the tail seals each flush's envelope, the
//! writer seals chunks at commit); both run on the writer's thread, so its lock is uncontended.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{params, Connection};

use super::crypto::{ChunkPlace, CryptoError, DataKey, MasterKey, MAX_SEALS};
use super::tail::TailCrypto;
use super::StoreError;

/// Every data key of a historian, unwrapped, and the one new seals use.
#[derive(Debug, Default)]
pub(crate) struct KeyRing {
    keys: HashMap<u32, DataKey>,
    current: Option<u32>,
    /// Seals made with the current key, as of the last save plus those since.
    seals: u64,
    /// Seals not yet saved to `keys.seals`.
    unsaved: u64,
}

impl KeyRing {
    /// Unwraps every data key of the historian at `conn` with `master`. A key wrapped under
    /// another master key fails here, before anything is written: the error names both keys.
    pub(crate) fn load(
        conn: &Connection,
        path: &Path,
        master: &MasterKey,
    ) -> Result<Self, StoreError> {
        let read = |source| StoreError::Read {
            path: path.to_owned(),
            source,
        };
        let mut stmt = conn
            .prepare("SELECT id, wrapped, master_id, seals FROM keys ORDER BY id")
            .map_err(read)?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })
            .map_err(read)?;
        let mut ring = KeyRing::default();
        for row in rows {
            let (id, wrapped, master_id, seals) = row.map_err(read)?;
            let id = u32::try_from(id).map_err(|_| StoreError::Corrupt {
                path: path.to_owned(),
                detail: format!("data key id {id} out of range"),
            })?;
            let key = DataKey::unwrap(master, id, &wrapped).map_err(|_| StoreError::WrongKey {
                path: path.to_owned(),
                expected: master_id.clone(),
                found: master.id().to_owned(),
            })?;
            ring.keys.insert(id, key);
            ring.current = Some(id);
            ring.seals = u64::try_from(seals).unwrap_or(0);
        }
        Ok(ring)
    }

    /// Starts a new data key when there is none or the current one has made [`MAX_SEALS`]
    /// seals: generated, wrapped under `master` and committed before any use. Returns its id
    /// when one was started.
    pub(crate) fn ensure_current(
        &mut self,
        conn: &Connection,
        master: &MasterKey,
        now_ms: i64,
    ) -> Result<Option<u32>, CryptoError> {
        if self.current.is_some() && self.seals < MAX_SEALS {
            return Ok(None);
        }
        let id = self.keys.keys().max().map_or(1, |m| m + 1);
        let key = DataKey::generate(id)?;
        conn.execute(
            "INSERT INTO keys (id, wrapped, master_id, created_ms, seals) VALUES (?1, ?2, ?3, ?4, 0)",
            params![id, key.wrap(master)?, master.id(), now_ms],
        )
        .map_err(|e| CryptoError::KeyInvalid {
            path: "historian database".into(),
            reason: format!("cannot store data key {id}: {e}"),
        })?;
        self.keys.insert(id, key);
        self.current = Some(id);
        self.seals = 0;
        self.unsaved = 0;
        Ok(Some(id))
    }

    /// Seals a chunk with the current key: (key id, sealed bytes).
    pub(crate) fn seal_chunk(
        &mut self,
        place: &ChunkPlace,
        plain: &[u8],
    ) -> Result<(u32, Vec<u8>), CryptoError> {
        let key = self.current_key()?;
        let sealed = key.seal(place, plain)?;
        let id = key.id();
        self.count_seal();
        Ok((id, sealed))
    }

    /// Opens a chunk sealed under key `id`.
    pub(crate) fn open_chunk(
        &self,
        id: u32,
        place: &ChunkPlace,
        sealed: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.key(id)?.open(place, sealed)
    }

    /// Opens a tail envelope sealed under key `key_id`.
    fn open_envelope(&self, key_id: u32, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, String> {
        self.key(key_id)
            .and_then(|k| k.open_record(aad, sealed, "tail envelope"))
            .map_err(|e| e.to_string())
    }

    /// Adds the seals made since the last save to the current key's row, in the caller's
    /// transaction; returns how many (give them back with `restore_unsaved` if the
    /// transaction does not commit). On failure they count again at the next save.
    pub(crate) fn save_seals(&mut self, tx: &Connection) -> rusqlite::Result<u64> {
        let Some((id, n)) = self.take_unsaved() else {
            return Ok(0);
        };
        tx.execute(
            "UPDATE keys SET seals = seals + ?2 WHERE id = ?1",
            params![id, i64::try_from(n).unwrap_or(i64::MAX)],
        )
        .map(|_| n)
        .inspect_err(|_| self.restore_unsaved(n))
    }

    /// The seals since the last save, to add to the current key's row (in the commit's
    /// transaction): (key id, count).
    pub(crate) fn take_unsaved(&mut self) -> Option<(u32, u64)> {
        let id = self.current?;
        (self.unsaved > 0).then(|| (id, std::mem::take(&mut self.unsaved)))
    }

    /// A save failed: the seals count again at the next one.
    pub(crate) fn restore_unsaved(&mut self, n: u64) {
        self.unsaved += n;
    }

    fn current_key(&self) -> Result<&DataKey, CryptoError> {
        self.current
            .and_then(|id| self.keys.get(&id))
            .ok_or_else(|| CryptoError::Unopenable {
                what: "no current data key".into(),
            })
    }

    fn key(&self, id: u32) -> Result<&DataKey, CryptoError> {
        self.keys.get(&id).ok_or_else(|| CryptoError::Unopenable {
            what: format!("data key {id} is not in this historian"),
        })
    }

    fn count_seal(&mut self) {
        self.seals += 1;
        self.unsaved += 1;
    }
}

/// The writer's ring, shared with its tail.
#[derive(Debug, Clone, Default)]
pub(crate) struct SharedRing(Arc<Mutex<KeyRing>>);

impl SharedRing {
    pub(crate) fn new(ring: KeyRing) -> Self {
        Self(Arc::new(Mutex::new(ring)))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, KeyRing> {
        // A panic while holding it leaves the ring consistent (each method is one step).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl TailCrypto for SharedRing {
    fn seal(&mut self, aad: &[u8], plain: &[u8]) -> Result<(u32, Vec<u8>), String> {
        let mut ring = self.lock();
        let key = ring.current_key().map_err(|e| e.to_string())?;
        let id = key.id();
        let sealed = key.seal_record(aad, plain).map_err(|e| e.to_string())?;
        ring.count_seal();
        Ok((id, sealed))
    }

    fn open(&self, key_id: u32, aad: &[u8], sealed: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.lock().open_envelope(key_id, aad, sealed).map(Some)
    }
}

/// A reader's keys: opens, never seals.
#[derive(Debug)]
pub(crate) struct ReadKeys(pub(crate) KeyRing);

impl TailCrypto for ReadKeys {
    fn seal(&mut self, _aad: &[u8], _plain: &[u8]) -> Result<(u32, Vec<u8>), String> {
        Err("a reader never seals".into())
    }

    fn open(&self, key_id: u32, aad: &[u8], sealed: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.0.open_envelope(key_id, aad, sealed).map(Some)
    }
}
