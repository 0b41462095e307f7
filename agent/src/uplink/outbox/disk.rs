//! The outbox's file operations: open (scan and repair), append, acknowledge, read back, keep
//! the bound. Blocking I/O: callers run it off the async runtime (`spawn_blocking`).

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::Arc;

use super::format::{self, At, RecordMeta, SegmentHeader, RECORD_HEADER_LEN};
use super::{
    io_err, Backlog, Class, Damage, DroppedSegment, Entry, Outbox, OutboxError, Placed, ReadBack,
    ReadPos, Segment, Stream, ACK_LOG, ACK_LOG_COMPACT, DATA_KEY_ID, LOCK_FILE, SEGMENT_MAX,
    SEGMENT_MIN,
};
use crate::store::crypto::{DataKey, MasterKey};

/// A segment file found on open, before its records are counted.
struct Opened {
    class: Class,
    segment: Segment,
    records: Vec<format::Found>,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `dir` for `destination`: takes its lock, scans
    /// and repairs every segment, applies `acked.log`, and deletes what is fully acknowledged.
    /// Important entries are sealed under data keys wrapped by `master`; `None` stores them in
    /// plaintext and is for unit tests only (decision 0022).
    pub(crate) fn open(
        dir: &Path,
        destination: &str,
        master: Option<Arc<MasterKey>>,
        max_bytes: u64,
    ) -> Result<Outbox, OutboxError> {
        let mut b = fs::DirBuilder::new();
        b.recursive(true);
        std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
        b.create(dir).map_err(io_err(dir))?;
        let lock = lock(dir)?;
        let ack_path = dir.join(ACK_LOG);
        let ack_log = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .mode(0o600)
            .open(&ack_path)
            .map_err(io_err(&ack_path))?;
        let mut outbox = Outbox {
            dir: dir.to_owned(),
            destination: Arc::from(destination),
            master,
            max_bytes,
            segment_bytes: (max_bytes / 64).clamp(SEGMENT_MIN, SEGMENT_MAX),
            streams: Class::ALL.map(|class| Stream {
                class,
                segments: VecDeque::new(),
                active: None,
                read: None,
            }),
            next_id: 1,
            disk_bytes: 0,
            ack_log,
            ack_log_len: 0,
            pending_acks: Vec::new(),
            cursor: None,
            _lock: lock,
            scratch: Vec::new(),
            content: Vec::new(),
            damage: Damage::default(),
            rolled: Vec::new(),
        };
        outbox.scan_all()?;
        Ok(outbox)
    }

    /// Reads every segment and the acknowledgements into memory counters.
    fn scan_all(&mut self) -> Result<(), OutboxError> {
        let acked = self.read_acks()?;
        let mut names: Vec<(Class, u64, String)> = Vec::new();
        for e in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let e = e.map_err(io_err(&self.dir))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((class, first)) = Class::parse_file_name(&name) {
                names.push((class, first, name));
            } else if std::path::Path::new(&name)
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("tmp"))
            {
                // A compaction cut short: the file it was to replace is intact.
                let _ = fs::remove_file(e.path());
            }
        }
        names.sort_by_key(|(c, first, _)| (*c, *first));
        for (class, first, name) in names {
            let Some(opened) = self.open_segment(class, first, &name)? else {
                continue;
            };
            self.admit_segment(opened, &acked);
        }
        for s in &mut self.streams {
            if let Some(last) = s.segments.back() {
                let path = self.dir.join(s.class.file_name(last.first_id));
                let f = OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .map_err(io_err(&path))?;
                s.active = Some(f);
            }
        }
        let live = self.streams.iter().any(|s| !s.segments.is_empty());
        self.cursor = live.then_some(0);
        // Acknowledgements of segments that are gone are dead weight: rewrite without them.
        if acked.iter().any(|&id| {
            !self
                .streams
                .iter()
                .any(|s| s.segments.iter().any(|g| g.covers(id)))
        }) {
            self.compact_acks()?;
        }
        Ok(())
    }

    /// Reads one segment file: its header, key and records, cutting a torn tail. `None` when it
    /// was set aside (quarantined) as unreadable.
    fn open_segment(
        &mut self,
        class: Class,
        first: u64,
        name: &str,
    ) -> Result<Option<Opened>, OutboxError> {
        let path = self.dir.join(name);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let header = SegmentHeader::decode(&bytes)
            .ok()
            .filter(|(h, _)| h.class == class && h.first_id == first);
        let Some((header, header_len)) = header else {
            self.quarantine(name)?;
            return Ok(None);
        };
        let key = match (&header.key, &self.master) {
            (None, _) => None,
            (Some((key_id, wrapped)), Some(master)) if key_id == master.id() => {
                if let Ok(k) = DataKey::unwrap(master, DATA_KEY_ID, wrapped) {
                    Some(k)
                } else {
                    self.quarantine(name)?;
                    return Ok(None);
                }
            }
            // Sealed under another master key (or none given): nothing in it can be read.
            (Some(_), _) => {
                self.quarantine(name)?;
                return Ok(None);
            }
        };
        let scan = format::scan(&bytes, 0, header_len as u64);
        if scan.end < bytes.len() as u64 {
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            f.set_len(scan.end)
                .and_then(|()| f.sync_data())
                .map_err(io_err(&path))?;
            self.damage.torn_bytes += bytes.len() as u64 - scan.end;
        }
        for (from, to) in &scan.skipped {
            self.damage.skipped_records += 1;
            self.damage.skipped_bytes += to - from;
        }
        let segment = Segment {
            first_id: first,
            last_id: first.saturating_sub(1),
            header_len: header_len as u64,
            len: scan.end,
            key,
            live_messages: 0,
            live_items: 0,
            live_bytes: 0,
            oldest_live_ms: None,
            done: Vec::new(),
            skipped: scan.skipped,
        };
        Ok(Some(Opened {
            class,
            segment,
            records: scan.records,
        }))
    }

    /// Counts a scanned segment's live records; deletes it if none is live.
    fn admit_segment(&mut self, opened: Opened, acked: &HashSet<u64>) {
        let Opened {
            class,
            mut segment,
            records,
        } = opened;
        for f in &records {
            let id = f.meta.id;
            // Ids only grow within a segment; anything else is not believed.
            if id < segment.first_id
                || (id <= segment.last_id && segment.last_id >= segment.first_id)
            {
                continue;
            }
            segment.extend_to(id);
            self.next_id = self.next_id.max(id + 1);
            if acked.contains(&id) {
                segment.set_done(id);
            } else {
                segment.live_messages += 1;
                segment.live_items += u64::from(f.meta.items);
                segment.live_bytes += f.len;
                segment.oldest_live_ms = Some(
                    segment
                        .oldest_live_ms
                        .map_or(f.meta.created_ms, |t| t.min(f.meta.created_ms)),
                );
            }
        }
        self.next_id = self.next_id.max(segment.first_id + 1);
        let path = self.dir.join(class.file_name(segment.first_id));
        if segment.live_messages == 0 {
            // Everything in it was acknowledged: it goes (with its data key).
            let _ = fs::remove_file(path);
            return;
        }
        self.disk_bytes += segment.len;
        self.streams[class.index()].segments.push_back(segment);
    }

    /// Renames a segment that cannot be read to `*.quarantined` (kept as evidence, out of the
    /// outbox) and counts it.
    fn quarantine(&mut self, name: &str) -> Result<(), OutboxError> {
        let from = self.dir.join(name);
        let to = self.dir.join(format!("{name}.quarantined"));
        fs::rename(&from, &to).map_err(io_err(&from))?;
        self.damage.quarantined.push(name.to_owned());
        Ok(())
    }

    /// The acknowledged ids in `acked.log`; a torn last entry is cut, damaged ones counted.
    fn read_acks(&mut self) -> Result<HashSet<u64>, OutboxError> {
        let path = self.dir.join(ACK_LOG);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let (ids, bad, torn) = format::decode_acks(&bytes);
        self.damage.bad_acks += bad;
        self.ack_log_len = bytes.len() as u64;
        if torn > 0 {
            self.ack_log_len -= torn as u64;
            self.ack_log
                .set_len(self.ack_log_len)
                .map_err(io_err(&path))?;
            self.damage.torn_bytes += torn as u64;
        }
        Ok(ids.into_iter().collect())
    }

    /// Rewrites `acked.log` with only the ids of segments still on disk.
    fn compact_acks(&mut self) -> Result<(), OutboxError> {
        self.flush_acks()?;
        let path = self.dir.join(ACK_LOG);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let (ids, _, _) = format::decode_acks(&bytes);
        let mut kept = Vec::with_capacity(bytes.len());
        for id in ids {
            let live = self
                .streams
                .iter()
                .any(|s| s.segments.iter().any(|g| g.covers(id)));
            if live {
                kept.extend_from_slice(&format::encode_ack(id));
            }
        }
        let tmp = self.dir.join(format!("{ACK_LOG}.tmp"));
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&kept)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&tmp))?;
        // Segments deleted before now must stay deleted before their acknowledgements go.
        sync_dir(&self.dir)?;
        fs::rename(&tmp, &path).map_err(io_err(&path))?;
        sync_dir(&self.dir)?;
        self.ack_log = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&path)
            .map_err(io_err(&path))?;
        self.ack_log_len = kept.len() as u64;
        Ok(())
    }

    /// Appends `entries` durably (one write per entry, one `fdatasync` per stream touched):
    /// the `n`th result is where entry `n` went, or `None` if it could not be written (core
    /// data, or a write error; the caller counts it as dropped).
    pub(crate) fn append(
        &mut self,
        entries: &[Entry<'_>],
        now_ms: i64,
    ) -> Result<Vec<Option<Placed>>, OutboxError> {
        let mut placed = Vec::with_capacity(entries.len());
        let mut touched = [false; 6];
        let mut created = false;
        let mut first_error = None;
        for e in entries {
            match self.append_one(e, now_ms, &mut created) {
                Ok(p) => {
                    touched[e.class.index()] = true;
                    placed.push(Some(p));
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                    placed.push(None);
                }
            }
        }
        let rolled = std::mem::take(&mut self.rolled);
        for (i, s) in self.streams.iter_mut().enumerate() {
            let was_rolled = rolled.iter().any(|(c, _)| *c == i);
            let Some(f) = s.active.as_ref().filter(|_| touched[i] || was_rolled) else {
                continue;
            };
            let synced = rolled
                .iter()
                .filter(|(c, _)| *c == i)
                .try_for_each(|(_, old)| old.sync_data())
                .and_then(|()| f.sync_data());
            if let Err(e) = synced {
                // Not durable: the stream's entries of this batch are not counted as queued.
                for p in placed
                    .iter_mut()
                    .filter(|p| p.is_some_and(|p| p.class == s.class))
                {
                    *p = None;
                }
                first_error.get_or_insert(OutboxError::Io {
                    path: self.dir.join(s.class.name()),
                    source: e,
                });
            }
        }
        if created {
            sync_dir(&self.dir)?;
        }
        match first_error {
            Some(e) if placed.iter().all(Option::is_none) => Err(e),
            _ => Ok(placed),
        }
    }

    fn append_one(
        &mut self,
        e: &Entry<'_>,
        now_ms: i64,
        created: &mut bool,
    ) -> Result<Placed, OutboxError> {
        let id = self.next_id;
        self.content.clear();
        format::encode_content(&e.content, &mut self.content);
        let estimate =
            (RECORD_HEADER_LEN + format::BODY_FIXED_LEN + self.content.len() + 28) as u64;
        let class = e.class;
        let roll = self.streams[class.index()]
            .segments
            .back()
            .is_none_or(|s| s.len > s.header_len && s.len + estimate > self.segment_bytes)
            || self.streams[class.index()].active.is_none();
        if roll {
            self.roll(class, id, now_ms)?;
            *created = true;
        }
        let stream = &mut self.streams[class.index()];
        let segment = stream.segments.back_mut().expect("rolled above");
        let sealed = match (&segment.key, class.level()) {
            (Some(key), crate::model::Level::Important) => {
                let aad = format::aad(&self.destination, id, class);
                Some(key.seal_record(&aad, &self.content).map_err(|source| {
                    OutboxError::Crypto {
                        path: self.dir.clone(),
                        source,
                    }
                })?)
            }
            _ => None,
        };
        let meta = RecordMeta {
            id,
            created_ms: now_ms,
            class,
            sealed: sealed.is_some(),
            items: e.items,
        };
        self.scratch.clear();
        format::encode_record(
            &meta,
            sealed.as_deref().unwrap_or(&self.content),
            &mut self.scratch,
        );
        let f = stream.active.as_mut().expect("an active segment");
        let path = self.dir.join(class.file_name(segment.first_id));
        if let Err(err) = f.write_all(&self.scratch) {
            // Never leave half a record for the next one to follow.
            let _ = f.set_len(segment.len);
            return Err(io_err(&path)(err));
        }
        let len = self.scratch.len() as u64;
        self.next_id += 1;
        segment.extend_to(id);
        segment.len += len;
        segment.live_messages += 1;
        segment.live_items += u64::from(e.items);
        segment.live_bytes += len;
        segment.oldest_live_ms.get_or_insert(now_ms);
        self.disk_bytes += len;
        Ok(Placed {
            id,
            class,
            created_ms: now_ms,
            disk_len: u32::try_from(len).unwrap_or(u32::MAX),
        })
    }

    /// An id for a message kept in memory only (its append failed): in order with the
    /// entries on disk, never reused.
    pub(crate) fn reserve_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Starts a new segment of `class` whose first record is `first_id`.
    fn roll(&mut self, class: Class, first_id: u64, now_ms: i64) -> Result<(), OutboxError> {
        let key = match (&self.master, class.level()) {
            (Some(master), crate::model::Level::Important) => {
                let crypto = |source| OutboxError::Crypto {
                    path: self.dir.clone(),
                    source,
                };
                let key = DataKey::generate(DATA_KEY_ID).map_err(crypto)?;
                let wrapped = key.wrap(master).map_err(crypto)?;
                Some((key, (master.id().to_owned(), wrapped)))
            }
            _ => None,
        };
        let header = SegmentHeader {
            class,
            first_id,
            created_ms: now_ms,
            key: key.as_ref().map(|(_, h)| h.clone()),
        };
        let bytes = header.encode();
        let path = self.dir.join(class.file_name(first_id));
        let mut f = OpenOptions::new()
            .create_new(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        if let Err(e) = f.write_all(&bytes) {
            let _ = fs::remove_file(&path);
            return Err(io_err(&path)(e));
        }
        let stream = &mut self.streams[class.index()];
        if let Some(old) = stream.active.replace(f) {
            // It may hold entries of the batch being appended: `append` syncs it too.
            self.rolled.push((class.index(), old));
        }
        stream.segments.push_back(Segment {
            first_id,
            last_id: first_id - 1,
            header_len: bytes.len() as u64,
            len: bytes.len() as u64,
            key: key.map(|(k, _)| k),
            live_messages: 0,
            live_items: 0,
            live_bytes: 0,
            oldest_live_ms: None,
            done: Vec::new(),
            skipped: Vec::new(),
        });
        self.disk_bytes += bytes.len() as u64;
        Ok(())
    }

    /// The broker acknowledged entry `id` of `class` (`items`, `disk_len` bytes, created at
    /// `created_ms`): it is noted for `acked.log`, and a segment left with nothing live is
    /// deleted unless it is the one being appended to.
    pub(crate) fn ack(
        &mut self,
        id: u64,
        class: Class,
        items: u64,
        disk_len: u64,
        created_ms: i64,
    ) {
        let stream = &mut self.streams[class.index()];
        let Some(segment) = stream.segment_of(id) else {
            return;
        };
        if !segment.set_done(id) {
            return;
        }
        segment.live_messages = segment.live_messages.saturating_sub(1);
        segment.live_items = segment.live_items.saturating_sub(items);
        segment.live_bytes = segment.live_bytes.saturating_sub(disk_len);
        if segment.live_messages == 0 {
            segment.oldest_live_ms = None;
        } else if all_done_below(segment, id) {
            // The next live entry is younger than this one: a bound on its age.
            segment.oldest_live_ms = Some(created_ms);
        }
        self.pending_acks.extend_from_slice(&format::encode_ack(id));
        let first = segment.first_id;
        let fully_done = segment.live_messages == 0;
        let is_last = stream.segments.back().is_some_and(|s| s.first_id == first);
        if fully_done && !is_last {
            self.delete_segment(class, first);
        }
    }

    /// Writes the acknowledgements noted so far to `acked.log` (not synced: see the module
    /// docs), compacting it when it has grown large.
    pub(crate) fn flush_acks(&mut self) -> Result<(), OutboxError> {
        if self.pending_acks.is_empty() {
            return Ok(());
        }
        let path = self.dir.join(ACK_LOG);
        self.ack_log
            .write_all(&self.pending_acks)
            .map_err(io_err(&path))?;
        self.ack_log_len += self.pending_acks.len() as u64;
        self.pending_acks.clear();
        if self.ack_log_len > ACK_LOG_COMPACT {
            self.compact_acks()?;
        }
        Ok(())
    }

    /// Removes a segment file and its counters.
    fn delete_segment(&mut self, class: Class, first_id: u64) {
        let stream = &mut self.streams[class.index()];
        let Some(i) = stream.segments.iter().position(|s| s.first_id == first_id) else {
            return;
        };
        let s = stream.segments.remove(i).expect("found above");
        if i == stream.segments.len() {
            // It was the one being appended to: the next append starts a new segment.
            stream.active = None;
        }
        if stream.read.is_some_and(|r| r.segment == first_id) {
            stream.read = None;
        }
        self.disk_bytes = self.disk_bytes.saturating_sub(s.len);
        let _ = fs::remove_file(self.dir.join(class.file_name(first_id)));
    }

    /// Entries wait on disk from entry `from_id` on (every entry before it is in memory): the
    /// reader starts there. `before` is each stream's end before the batch that holds
    /// `from_id` was appended.
    pub(crate) fn spill_from(&mut self, from_id: u64, before: &[Option<(u64, u64)>; 6]) {
        if self.cursor.is_some() {
            return;
        }
        self.cursor = Some(from_id);
        for (s, b) in self.streams.iter_mut().zip(before) {
            s.read = b.map(|(segment, offset)| ReadPos { segment, offset });
        }
    }

    /// Each stream's end (segment, length) now: see [`Outbox::spill_from`].
    pub(crate) fn ends(&self) -> [Option<(u64, u64)>; 6] {
        std::array::from_fn(|i| self.streams[i].end().map(|p| (p.segment, p.offset)))
    }

    /// Whether entries wait on disk that are not in memory.
    pub(crate) fn has_spilled(&self) -> bool {
        self.cursor.is_some()
    }

    /// Reads live entries back in id order, from the cursor, until `room_items` would be
    /// exceeded (at least one if `take_one`). Returns `true` when no entry is left on disk only.
    pub(crate) fn read_back(
        &mut self,
        room_items: u64,
        take_one: bool,
        out: &mut Vec<ReadBack>,
    ) -> Result<bool, OutboxError> {
        let mut taken = 0u64;
        let mut peeked: [Option<(format::Found, ReadPos)>; 6] = Default::default();
        loop {
            let Some(cursor) = self.cursor else {
                return Ok(true);
            };
            for (i, p) in peeked.iter_mut().enumerate() {
                if p.is_none() {
                    *p = self.peek(i, cursor)?;
                }
            }
            let next = peeked
                .iter()
                .enumerate()
                .filter_map(|(i, p)| p.map(|(f, _)| (f.meta.id, i)))
                .min();
            let Some((id, i)) = next else {
                self.cursor = None;
                return Ok(true);
            };
            let (found, pos) = peeked[i].take().expect("chosen from the peeked");
            let items = u64::from(found.meta.items);
            let fits = taken + items <= room_items || (take_one && out.is_empty());
            if !fits {
                self.cursor = Some(id);
                return Ok(false);
            }
            self.streams[i].read = Some(ReadPos {
                segment: pos.segment,
                offset: found.offset + found.len,
            });
            self.cursor = Some(id + 1);
            if let Some(entry) = self.read_entry(i, pos.segment, found)? {
                taken += items;
                out.push(entry);
            }
        }
    }

    /// The next live record of stream `i` with an id at or after `cursor`, and its position.
    fn peek(
        &mut self,
        i: usize,
        cursor: u64,
    ) -> Result<Option<(format::Found, ReadPos)>, OutboxError> {
        let class = self.streams[i].class;
        let mut pos = match self.streams[i].read {
            Some(p) if self.streams[i].segment(p.segment).is_some() => p,
            _ => {
                let Some(s) = self.streams[i]
                    .segments
                    .iter()
                    .find(|s| s.last_id >= cursor)
                else {
                    return Ok(None);
                };
                ReadPos {
                    segment: s.first_id,
                    offset: s.header_len,
                }
            }
        };
        loop {
            let stream = &self.streams[i];
            let seg = stream
                .segment(pos.segment)
                .expect("positions name live segments");
            if pos.offset >= seg.len {
                let next = stream.segments.iter().find(|s| s.first_id > pos.segment);
                let Some(next) = next else {
                    self.streams[i].read = Some(pos);
                    return Ok(None);
                };
                pos = ReadPos {
                    segment: next.first_id,
                    offset: next.header_len,
                };
                continue;
            }
            if let Some(&(_, end)) = seg
                .skipped
                .iter()
                .find(|(a, b)| (*a..*b).contains(&pos.offset))
            {
                pos.offset = end;
                continue;
            }
            let path = self.dir.join(class.file_name(pos.segment));
            match read_record(&path, pos.offset, seg.len, &mut self.scratch)? {
                At::Record(f) => {
                    if f.meta.id >= cursor && !seg.is_done(f.meta.id) {
                        return Ok(Some((f, pos)));
                    }
                    pos.offset += f.len;
                }
                At::Short | At::Bad => {
                    // Damaged since it was written (the open scan passed it): skip to the next
                    // valid record and remember the region.
                    let end = self.resync(&path, pos.offset, seg.len)?;
                    let seg = self.streams[i]
                        .segments
                        .iter_mut()
                        .find(|s| s.first_id == pos.segment)
                        .expect("live segment");
                    seg.skipped.push((pos.offset, end));
                    self.damage.skipped_records += 1;
                    self.damage.skipped_bytes += end - pos.offset;
                    pos.offset = end;
                }
            }
        }
    }

    /// The offset of the next valid record after a damaged one at `at`, or the segment's end.
    fn resync(&mut self, path: &Path, at: u64, len: u64) -> Result<u64, OutboxError> {
        let f = File::open(path).map_err(io_err(path))?;
        let n = usize::try_from(len - at).unwrap_or(0);
        self.scratch.resize(n, 0);
        f.read_exact_at(&mut self.scratch, at)
            .map_err(io_err(path))?;
        Ok(format::resync(&self.scratch, at, at + 1).unwrap_or(len))
    }

    /// Reads record `found` of stream `i` and opens its content. An entry whose seal does not
    /// open is counted, marked done (and acknowledged, so it is not tried again), and skipped.
    fn read_entry(
        &mut self,
        i: usize,
        segment: u64,
        found: format::Found,
    ) -> Result<Option<ReadBack>, OutboxError> {
        let class = self.streams[i].class;
        let path = self.dir.join(class.file_name(segment));
        let len = found.offset + found.len;
        if !matches!(
            read_record(&path, found.offset, len, &mut self.scratch)?,
            At::Record(_)
        ) {
            return Ok(None);
        }
        let content = format::content_of(&self.scratch);
        let seg = self.streams[i].segment(segment).expect("live segment");
        let plain = if found.meta.sealed {
            let aad = format::aad(&self.destination, found.meta.id, class);
            let opened = seg
                .key
                .as_ref()
                .map(|k| k.open_record(&aad, content, &format!("outbox entry {}", found.meta.id)));
            if let Some(Ok(p)) = opened {
                p
            } else {
                self.damage.unopenable += 1;
                self.ack(
                    found.meta.id,
                    class,
                    u64::from(found.meta.items),
                    found.len,
                    found.meta.created_ms,
                );
                return Ok(None);
            }
        } else {
            content.to_vec()
        };
        Ok(Some(ReadBack {
            meta: found.meta,
            disk_len: u32::try_from(found.len).unwrap_or(u32::MAX),
            content: plain,
        }))
    }

    /// Drops whole segments, in [`Class`] order and oldest first, until the files fit the bound;
    /// `protected(class, first_id, last_id)` names segments that must stay (entries handed to
    /// the client, or just appended). Returns what was dropped.
    pub(crate) fn keep_bound(
        &mut self,
        protected: impl Fn(Class, u64, u64) -> bool,
    ) -> Vec<DroppedSegment> {
        let mut dropped = Vec::new();
        while self.disk_bytes > self.max_bytes {
            let victim = self.streams.iter().find_map(|s| {
                s.segments
                    .iter()
                    .find(|g| !protected(s.class, g.first_id, g.last_id))
                    .map(|g| (s.class, g.first_id))
            });
            let Some((class, first_id)) = victim else {
                break;
            };
            let seg = self.streams[class.index()]
                .segment(first_id)
                .expect("victim is live");
            if seg.live_messages > 0 {
                let (first_key, last_key) = self.key_range(class, first_id);
                let seg = self.streams[class.index()]
                    .segment(first_id)
                    .expect("victim is live");
                dropped.push(DroppedSegment {
                    class,
                    first_id,
                    last_id: seg.last_id,
                    messages: seg.live_messages,
                    items: seg.live_items,
                    bytes: seg.live_bytes,
                    first_key,
                    last_key,
                });
            }
            self.delete_segment(class, first_id);
        }
        dropped
    }

    /// The first key of the first live entry and the last key of the last one of a segment,
    /// for the drop's audit record; empty strings if they cannot be read.
    fn key_range(&mut self, class: Class, first_id: u64) -> (String, String) {
        let i = class.index();
        let saved = (self.streams[i].read, self.cursor);
        self.streams[i].read = None;
        let Some(seg) = self.streams[i].segment(first_id) else {
            return (String::new(), String::new());
        };
        let (from, to) = (seg.first_id, seg.last_id);
        let mut keys = (String::new(), String::new());
        let mut cursor = from;
        while let Ok(Some((found, pos))) = self.peek(i, cursor) {
            if pos.segment != first_id || found.meta.id > to {
                break;
            }
            cursor = found.meta.id + 1;
            if let Ok(Some(entry)) = self.read_entry(i, first_id, found) {
                if let Some(c) = format::decode_content(&entry.content) {
                    if keys.0.is_empty() {
                        c.first_key.clone_into(&mut keys.0);
                    }
                    c.last_key.clone_into(&mut keys.1);
                }
            }
        }
        (self.streams[i].read, self.cursor) = saved;
        keys
    }

    /// What waits, per class.
    pub(crate) fn backlog(&self) -> [Backlog; 6] {
        std::array::from_fn(|i| {
            let mut b = Backlog::default();
            for s in &self.streams[i].segments {
                b.messages += s.live_messages;
                b.items += s.live_items;
                b.bytes += s.live_bytes;
                if let Some(t) = s.oldest_live_ms {
                    b.oldest_ms = Some(b.oldest_ms.map_or(t, |o| o.min(t)));
                }
            }
            b
        })
    }

    /// Bytes of every segment file.
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Damage found since the last call.
    pub(crate) fn take_damage(&mut self) -> Damage {
        std::mem::take(&mut self.damage)
    }

    /// Writes `status.json` (temporary file and rename; not synced: it is advice for
    /// `edge-agent status`, rewritten every 10 s).
    pub(crate) fn write_status(&self, json: &str) -> Result<(), OutboxError> {
        let tmp = self.dir.join(format!("{}.tmp", super::STATUS_FILE));
        fs::write(&tmp, json).map_err(io_err(&tmp))?;
        let path = self.dir.join(super::STATUS_FILE);
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }

    /// Writes the acknowledgements and syncs them (a clean stop replays nothing acknowledged).
    pub(crate) fn close(&mut self) -> Result<(), OutboxError> {
        self.flush_acks()?;
        let path = self.dir.join(ACK_LOG);
        self.ack_log.sync_data().map_err(io_err(&path))
    }

    /// The directory, for log lines.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Whether every id of `segment` below `id` is done.
fn all_done_below(segment: &Segment, id: u64) -> bool {
    let n = usize::try_from(id - segment.first_id).unwrap_or(usize::MAX);
    let (words, bits) = (n / 64, n % 64);
    segment.done.iter().take(words).all(|w| *w == u64::MAX)
        && (bits == 0
            || segment
                .done
                .get(words)
                .is_some_and(|w| w | !((1 << bits) - 1) == u64::MAX))
}

/// Reads the record at `offset` of the file at `path` (whose valid data ends at `len`) into
/// `buf` and parses it.
fn read_record(path: &Path, offset: u64, len: u64, buf: &mut Vec<u8>) -> Result<At, OutboxError> {
    let f = File::open(path).map_err(io_err(path))?;
    let avail = usize::try_from(len.saturating_sub(offset)).unwrap_or(0);
    let head = avail.min(RECORD_HEADER_LEN);
    buf.resize(head, 0);
    f.read_exact_at(buf, offset).map_err(io_err(path))?;
    if head < RECORD_HEADER_LEN || buf[0..4] != format::RECORD_MAGIC {
        return Ok(format::record_at(buf, offset, offset));
    }
    let body = u32::from_le_bytes(buf[4..8].try_into().expect("four bytes")) as usize;
    let total = (RECORD_HEADER_LEN + body.min(format::MAX_BODY)).min(avail);
    buf.resize(total, 0);
    f.read_exact_at(buf, offset).map_err(io_err(path))?;
    Ok(format::record_at(buf, offset, offset))
}

/// The outbox's exclusive lock.
fn lock(dir: &Path) -> Result<File, OutboxError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(&path))?;
    // Fully qualified: std has an inherent `File::try_lock` (Rust 1.89) with another error type.
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(OutboxError::Locked {
            path: dir.to_owned(),
        }),
        Err(fs4::TryLockError::Error(source)) => Err(OutboxError::Io { path, source }),
    }
}

fn sync_dir(dir: &Path) -> Result<(), OutboxError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}
