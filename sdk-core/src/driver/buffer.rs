//! The crash-safe fix buffer: one SQLite file in WAL mode with a single
//! writer connection.
//!
//! Guarantees:
//! - a fix counts as recorded only once its transaction committed, together
//!   with the seq counter (a crash never reuses or skips a seq it handed out);
//! - a fix leaves the buffer only when the server acknowledged it
//!   ([`Buffer::ack`]: 2xx with its seq at or below `high_seq`), when the
//!   server refused it for good ([`Buffer::quarantine`]), or when the buffer
//!   is full or the fix is too old (oldest first, counted in
//!   [`BufferStats::evicted_total`]);
//! - in-flight marks are cleared on open, so a crash mid-upload resends that
//!   batch (the server de-duplicates by seq).
//!
//! Schema changes are migrations keyed by `PRAGMA user_version`; the file is
//! tagged with `PRAGMA application_id` so a foreign SQLite file is refused
//! instead of being written into.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, ErrorCode, OptionalExtension, Transaction};
use waypost_protocol::Fix;

/// `PRAGMA application_id` of a Waypost driver buffer ("WPST").
pub const APPLICATION_ID: i32 = 0x5750_5354;
/// Schema version written by this SDK.
pub const SCHEMA_VERSION: i32 = 1;

/// Durability of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=NORMAL`: survives an app crash or kill; a power loss may
    /// lose the last moments (SQLite's recommended WAL setting).
    Normal,
    /// `synchronous=FULL`: survives power loss too, at the cost of an fsync
    /// per commit.
    Full,
}

/// Limits and behaviour of the buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferOptions {
    /// Most fixes kept; the oldest are evicted beyond it.
    pub max_fixes: u64,
    /// Fixes older than this (by their timestamp) are evicted.
    pub max_age: Duration,
    /// Most quarantined fixes kept for inspection.
    pub max_quarantined: u64,
    /// Commit durability.
    pub durability: Durability,
    /// On a corrupt file: move it aside (`<path>.corrupt-<ms>`) and start an
    /// empty buffer instead of failing. A foreign file is never touched.
    pub recreate_if_corrupt: bool,
}

impl Default for BufferOptions {
    fn default() -> Self {
        Self {
            max_fixes: 100_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            max_quarantined: 1_000,
            durability: Durability::Normal,
            recreate_if_corrupt: false,
        }
    }
}

/// Why the buffer failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite says the file is not a database or is damaged.
    #[error("buffer file {path} is corrupt: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// SQLite's words.
        detail: String,
    },
    /// A SQLite file of another application (never touched).
    #[error("{path} is not a Waypost driver buffer: {detail}")]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// Written by a newer SDK.
    #[error(
        "buffer file {path} has schema version {found}, newer than this SDK's {SCHEMA_VERSION}"
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its `user_version`.
        found: i32,
    },
    /// Any other SQLite failure (disk full, I/O error, ...).
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Moving a corrupt file aside failed.
    #[error("moving the corrupt buffer aside: {0}")]
    Io(#[from] std::io::Error),
    /// A stored row does not parse.
    #[error("stored fix seq {seq} is unreadable: {detail}")]
    BadRow {
        /// The row's seq.
        seq: u64,
        /// The parse error.
        detail: String,
    },
}

/// A batch taken for upload: fixes in seq order, marked in flight.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The fixes, lowest seq first.
    pub fixes: Vec<Fix>,
    /// Their JSON encodings, as stored (used to build the body cheaply).
    pub json: Vec<String>,
}

impl Batch {
    /// Lowest seq in the batch.
    pub fn first_seq(&self) -> Option<u64> {
        self.fixes.first().map(|f| f.seq)
    }
    /// Highest seq in the batch.
    pub fn last_seq(&self) -> Option<u64> {
        self.fixes.last().map(|f| f.seq)
    }
}

/// A fix the server refused for good, kept aside.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantinedFix {
    /// The fix.
    pub fix: Fix,
    /// The server's reason.
    pub reason: String,
    /// When it was quarantined, Unix epoch ms.
    pub quarantined_at_ms: i64,
}

/// Counters of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BufferStats {
    /// Fixes waiting for an acknowledgement (in flight included).
    pub pending: u64,
    /// Timestamp (ms) of the oldest pending fix.
    pub oldest_ts: Option<i64>,
    /// Seq the next recorded fix gets.
    pub next_seq: u64,
    /// Fixes evicted (buffer full or too old) over the file's life.
    pub evicted_total: u64,
    /// Fixes quarantined over the file's life.
    pub quarantined_total: u64,
    /// Fixes acknowledged by the server over the file's life.
    pub acked_total: u64,
}

/// The buffer. Not `Sync`: the driver keeps it behind a mutex (one writer).
pub struct Buffer {
    conn: Connection,
    path: PathBuf,
    opts: BufferOptions,
    next_seq: u64,
    pending: u64,
    last_fix: Option<Fix>,
    evicted_total: u64,
    quarantined_total: u64,
    acked_total: u64,
    last_age_check_ms: i64,
    /// Set when the file was found corrupt and recreated on open.
    recreated: Option<String>,
}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("path", &self.path)
            .field("pending", &self.pending)
            .field("next_seq", &self.next_seq)
            .finish_non_exhaustive()
    }
}

fn is_not_a_db(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Buffer {
    /// Opens (or creates) the buffer at `path`. `now_ms` (wall clock) seeds
    /// the seq of a new file: a fresh buffer starts at `now_ms`, so a phone
    /// whose buffer was lost keeps issuing seqs above the ones it used before
    /// (the server would otherwise drop them as duplicates).
    pub fn open(path: &Path, opts: BufferOptions, now_ms: i64) -> Result<Self, StoreError> {
        match Self::open_inner(path, &opts, now_ms) {
            Err(StoreError::Corrupt { detail, .. }) if opts.recreate_if_corrupt => {
                let aside = PathBuf::from(format!("{}.corrupt-{now_ms}", path.display()));
                tracing::error!(path = %path.display(), aside = %aside.display(), %detail,
                    "driver buffer is corrupt: moving it aside and starting empty");
                std::fs::rename(path, &aside)?;
                for suffix in ["-wal", "-shm"] {
                    let side = PathBuf::from(format!("{}{suffix}", path.display()));
                    if side.exists() {
                        let _ = std::fs::remove_file(side);
                    }
                }
                let mut buffer = Self::open_inner(path, &opts, now_ms)?;
                buffer.recreated = Some(format!(
                    "corrupt buffer moved to {}: {detail}",
                    aside.display()
                ));
                Ok(buffer)
            }
            other => other,
        }
    }

    fn open_inner(path: &Path, opts: &BufferOptions, now_ms: i64) -> Result<Self, StoreError> {
        let corrupt = |e: rusqlite::Error| {
            if is_not_a_db(&e) {
                StoreError::Corrupt {
                    path: path.to_owned(),
                    detail: e.to_string(),
                }
            } else {
                StoreError::Sqlite(e)
            }
        };
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let app_id: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(corrupt)?;
        let version: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        let tables: i64 = conn
            .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
            .map_err(corrupt)?;
        if app_id != APPLICATION_ID && (app_id != 0 || version != 0 || tables != 0) {
            return Err(StoreError::Foreign {
                path: path.to_owned(),
                detail: format!(
                    "application_id {app_id:#x}, user_version {version}, {tables} schema objects"
                ),
            });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.to_owned(),
                found: version,
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(corrupt)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(%mode, "driver buffer could not switch to WAL");
        }
        conn.execute_batch(match opts.durability {
            Durability::Normal => "PRAGMA synchronous=NORMAL",
            Durability::Full => "PRAGMA synchronous=FULL",
        })?;
        if tables != 0 {
            let check: String = conn
                .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
                .map_err(corrupt)?;
            if check != "ok" {
                return Err(StoreError::Corrupt {
                    path: path.to_owned(),
                    detail: check,
                });
            }
        }
        let mut conn = conn;
        migrate(&mut conn, version, now_ms).map_err(corrupt)?;
        // A crash mid-upload left marks behind: those fixes are simply
        // pending again (the server de-duplicates a resend).
        conn.execute("UPDATE fixes SET in_flight = 0 WHERE in_flight != 0", [])?;
        let mut buffer = Self {
            conn,
            path: path.to_owned(),
            opts: opts.clone(),
            next_seq: 1,
            pending: 0,
            last_fix: None,
            evicted_total: 0,
            quarantined_total: 0,
            acked_total: 0,
            last_age_check_ms: i64::MIN,
            recreated: None,
        };
        buffer.load_state()?;
        buffer.evict_expired(now_ms)?;
        Ok(buffer)
    }

    fn load_state(&mut self) -> Result<(), StoreError> {
        let get = |conn: &Connection, key: &str| -> Result<Option<i64>, rusqlite::Error> {
            conn.query_row("SELECT value FROM state WHERE key = ?1", [key], |r| {
                r.get::<_, i64>(0)
            })
            .optional()
        };
        self.next_seq = to_u64(get(&self.conn, "next_seq")?.unwrap_or(1)).max(1);
        self.evicted_total = to_u64(get(&self.conn, "evicted_total")?.unwrap_or(0));
        self.quarantined_total = to_u64(get(&self.conn, "quarantined_total")?.unwrap_or(0));
        self.acked_total = to_u64(get(&self.conn, "acked_total")?.unwrap_or(0));
        let last: Option<String> = self
            .conn
            .query_row("SELECT value FROM state WHERE key = 'last_fix'", [], |r| {
                r.get(0)
            })
            .optional()?;
        self.last_fix = last.and_then(|s| serde_json::from_str(&s).ok());
        self.pending = to_u64(
            self.conn
                .query_row("SELECT count(*) FROM fixes", [], |r| r.get(0))?,
        );
        Ok(())
    }

    /// Path of the file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the file was recreated on open, when it was.
    pub fn recreated(&self) -> Option<&str> {
        self.recreated.as_deref()
    }

    /// The last fix ever recorded (persisted with it), for the jump filter
    /// and for apps resuming after a restart.
    pub fn last_fix(&self) -> Option<&Fix> {
        self.last_fix.as_ref()
    }

    /// Fixes waiting for an acknowledgement.
    pub fn pending(&self) -> u64 {
        self.pending
    }

    /// Records `fixes` (their `seq` is ignored and assigned here) in one
    /// transaction and returns the assigned seqs and how many old fixes were
    /// evicted to make room. Nothing is recorded when it fails.
    pub fn append(&mut self, fixes: &[Fix], now_ms: i64) -> Result<(Vec<u64>, u64), StoreError> {
        if fixes.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let tx = self.conn.transaction()?;
        let mut seq = self.next_seq;
        let mut seqs = Vec::with_capacity(fixes.len());
        let mut last = None;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO fixes (seq, ts, body, in_flight) VALUES (?1, ?2, ?3, 0)",
            )?;
            for fix in fixes {
                let mut fix = fix.clone();
                fix.seq = seq;
                let body = serde_json::to_string(&fix).map_err(|e| StoreError::BadRow {
                    seq,
                    detail: e.to_string(),
                })?;
                insert.execute(params![to_i64(seq), fix.ts, body])?;
                seqs.push(seq);
                seq += 1;
                last = Some((fix, body));
            }
        }
        let pending = self.pending + fixes.len() as u64;
        let over = pending.saturating_sub(self.opts.max_fixes);
        let mut evicted = 0;
        if over > 0 {
            evicted = tx.execute(
                "DELETE FROM fixes WHERE seq IN (SELECT seq FROM fixes ORDER BY seq LIMIT ?1)",
                [to_i64(over)],
            )? as u64;
            set_state(&tx, "evicted_total", self.evicted_total + evicted)?;
        }
        set_state(&tx, "next_seq", seq)?;
        if let Some((_, body)) = &last {
            tx.execute(
                "INSERT INTO state (key, value) VALUES ('last_fix', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [body],
            )?;
        }
        tx.commit()?;
        self.next_seq = seq;
        self.pending = pending - evicted;
        self.evicted_total += evicted;
        self.last_fix = last.map(|(f, _)| f);
        let aged = if now_ms.saturating_sub(self.last_age_check_ms) >= 60_000 {
            self.evict_expired(now_ms)?
        } else {
            0
        };
        if evicted > 0 {
            tracing::warn!(evicted, "driver buffer full: oldest fixes evicted");
        }
        Ok((seqs, evicted + aged))
    }

    /// Evicts fixes older than `max_age`; returns how many.
    pub fn evict_expired(&mut self, now_ms: i64) -> Result<u64, StoreError> {
        self.last_age_check_ms = now_ms;
        let cutoff = now_ms.saturating_sub(self.opts.max_age.as_millis() as i64);
        let tx = self.conn.transaction()?;
        let n = tx.execute("DELETE FROM fixes WHERE ts < ?1", [cutoff])? as u64;
        if n > 0 {
            set_state(&tx, "evicted_total", self.evicted_total + n)?;
        }
        tx.commit()?;
        if n > 0 {
            tracing::warn!(
                evicted = n,
                "driver buffer: fixes older than max_age evicted"
            );
            self.evicted_total += n;
            self.pending = self.pending.saturating_sub(n);
        }
        Ok(n)
    }

    /// Takes the oldest pending fixes — at most `max_fixes`, and at most
    /// `max_bytes` of JSON (always at least one fix) — and marks them in
    /// flight. Fixes already in flight are skipped.
    pub fn next_batch(&mut self, max_fixes: usize, max_bytes: usize) -> Result<Batch, StoreError> {
        let mut batch = Batch {
            fixes: Vec::new(),
            json: Vec::new(),
        };
        let mut bytes = 0usize;
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT seq, body FROM fixes WHERE in_flight = 0 ORDER BY seq LIMIT ?1",
            )?;
            let mut rows = stmt.query([max_fixes.max(1) as i64])?;
            while let Some(row) = rows.next()? {
                let seq = to_u64(row.get(0)?);
                let body: String = row.get(1)?;
                // +1 for the comma between fixes.
                if !batch.fixes.is_empty() && bytes + body.len() + 1 > max_bytes {
                    break;
                }
                let fix: Fix = serde_json::from_str(&body).map_err(|e| StoreError::BadRow {
                    seq,
                    detail: e.to_string(),
                })?;
                bytes += body.len() + 1;
                batch.fixes.push(fix);
                batch.json.push(body);
            }
        }
        if let (Some(lo), Some(hi)) = (batch.first_seq(), batch.last_seq()) {
            self.conn.execute(
                "UPDATE fixes SET in_flight = 1 WHERE seq BETWEEN ?1 AND ?2",
                [to_i64(lo), to_i64(hi)],
            )?;
        }
        Ok(batch)
    }

    /// The server acknowledged `batch` up to `high_seq`: deletes its fixes
    /// with `seq <= high_seq` and releases the rest. Returns how many were
    /// deleted.
    pub fn ack(&mut self, batch: &Batch, high_seq: u64) -> Result<u64, StoreError> {
        let (Some(lo), Some(hi)) = (batch.first_seq(), batch.last_seq()) else {
            return Ok(0);
        };
        let upto = hi.min(high_seq);
        let tx = self.conn.transaction()?;
        let deleted = if upto >= lo {
            tx.execute(
                "DELETE FROM fixes WHERE seq BETWEEN ?1 AND ?2 AND in_flight = 1",
                [to_i64(lo), to_i64(upto)],
            )? as u64
        } else {
            0
        };
        tx.execute(
            "UPDATE fixes SET in_flight = 0 WHERE seq BETWEEN ?1 AND ?2",
            [to_i64(lo), to_i64(hi)],
        )?;
        set_state(&tx, "acked_total", self.acked_total + deleted)?;
        tx.commit()?;
        self.acked_total += deleted;
        self.pending = self.pending.saturating_sub(deleted);
        Ok(deleted)
    }

    /// The upload of `batch` failed: its fixes are pending again.
    pub fn release(&mut self, batch: &Batch) -> Result<(), StoreError> {
        if let (Some(lo), Some(hi)) = (batch.first_seq(), batch.last_seq()) {
            self.conn.execute(
                "UPDATE fixes SET in_flight = 0 WHERE seq BETWEEN ?1 AND ?2",
                [to_i64(lo), to_i64(hi)],
            )?;
        }
        Ok(())
    }

    /// Moves fix `seq` out of the upload queue into the (bounded) quarantine
    /// table. Returns false when no such pending fix exists.
    pub fn quarantine(&mut self, seq: u64, reason: &str, now_ms: i64) -> Result<bool, StoreError> {
        let tx = self.conn.transaction()?;
        let moved = tx.execute(
            "INSERT OR REPLACE INTO quarantine (seq, ts, body, reason, at_ms)
             SELECT seq, ts, body, ?2, ?3 FROM fixes WHERE seq = ?1",
            params![to_i64(seq), reason, now_ms],
        )?;
        if moved == 0 {
            return Ok(false);
        }
        tx.execute("DELETE FROM fixes WHERE seq = ?1", [to_i64(seq)])?;
        tx.execute(
            "DELETE FROM quarantine WHERE seq NOT IN
               (SELECT seq FROM quarantine ORDER BY seq DESC LIMIT ?1)",
            [to_i64(self.opts.max_quarantined)],
        )?;
        set_state(&tx, "quarantined_total", self.quarantined_total + 1)?;
        tx.commit()?;
        self.quarantined_total += 1;
        self.pending = self.pending.saturating_sub(1);
        Ok(true)
    }

    /// Quarantined fixes with their reasons, newest first.
    pub fn quarantined(&self, limit: usize) -> Result<Vec<QuarantinedFix>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, body, reason, at_ms FROM quarantine ORDER BY seq DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok((
                to_u64(r.get(0)?),
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (seq, body, reason, at) = row?;
            let fix = serde_json::from_str(&body).map_err(|e| StoreError::BadRow {
                seq,
                detail: e.to_string(),
            })?;
            out.push(QuarantinedFix {
                fix,
                reason,
                quarantined_at_ms: at,
            });
        }
        Ok(out)
    }

    /// Counters.
    pub fn stats(&self) -> Result<BufferStats, StoreError> {
        let oldest_ts = self
            .conn
            .query_row("SELECT ts FROM fixes ORDER BY seq LIMIT 1", [], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?;
        Ok(BufferStats {
            pending: self.pending,
            oldest_ts,
            next_seq: self.next_seq,
            evicted_total: self.evicted_total,
            quarantined_total: self.quarantined_total,
            acked_total: self.acked_total,
        })
    }
}

fn set_state(tx: &Transaction<'_>, key: &str, value: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO state (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        params![key, to_i64(value)],
    )?;
    Ok(())
}

/// Brings the schema from `from` to [`SCHEMA_VERSION`], one transaction per
/// step. Version 0 is an empty file.
fn migrate(conn: &mut Connection, from: i32, now_ms: i64) -> rusqlite::Result<()> {
    if from < 1 {
        let tx = conn.transaction()?;
        tx.execute_batch(&format!(
            "PRAGMA application_id = {APPLICATION_ID};
             CREATE TABLE fixes (
                 seq INTEGER PRIMARY KEY,
                 ts INTEGER NOT NULL,
                 body TEXT NOT NULL,
                 in_flight INTEGER NOT NULL DEFAULT 0
             );
             CREATE INDEX fixes_ts ON fixes (ts);
             CREATE TABLE quarantine (
                 seq INTEGER PRIMARY KEY,
                 ts INTEGER NOT NULL,
                 body TEXT NOT NULL,
                 reason TEXT NOT NULL,
                 at_ms INTEGER NOT NULL
             );
             CREATE TABLE state (key TEXT PRIMARY KEY, value NOT NULL);
             PRAGMA user_version = 1;"
        ))?;
        // A new buffer starts its seqs at the wall clock (see `open`).
        set_state(&tx, "next_seq", to_u64(now_ms).max(1))?;
        tx.commit()?;
    }
    // Future migrations: `if from < 2 { ... PRAGMA user_version = 2; }`.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::TempDir;

    const NOW: i64 = 1_700_000_000_000;

    fn fix(i: i64) -> Fix {
        Fix::new(0, NOW + i * 1000, 52.0 + i as f64 * 1e-4, 13.0)
    }

    fn open(dir: &TempDir, opts: BufferOptions) -> Buffer {
        Buffer::open(&dir.path().join("buf.db"), opts, NOW).unwrap()
    }

    #[test]
    fn seqs_start_at_the_clock_and_survive_reopen() {
        let dir = TempDir::new("buf-seq");
        let mut b = open(&dir, BufferOptions::default());
        let (seqs, evicted) = b.append(&[fix(0), fix(1)], NOW).unwrap();
        assert_eq!(seqs, vec![NOW as u64, NOW as u64 + 1]);
        assert_eq!(evicted, 0);
        drop(b);
        let mut b = open(&dir, BufferOptions::default());
        assert_eq!(b.pending(), 2);
        assert_eq!(b.last_fix().map(|f| f.seq), Some(NOW as u64 + 1));
        let (seqs, _) = b.append(&[fix(2)], NOW).unwrap();
        assert_eq!(seqs, vec![NOW as u64 + 2]);
    }

    #[test]
    fn batches_respect_caps_and_ack_deletes_only_acknowledged() {
        let dir = TempDir::new("buf-batch");
        let mut b = open(&dir, BufferOptions::default());
        let (seqs, _) = b
            .append(&(0..10).map(fix).collect::<Vec<_>>(), NOW)
            .unwrap();
        let batch = b.next_batch(4, 1 << 20).unwrap();
        assert_eq!(batch.fixes.len(), 4);
        assert_eq!(batch.first_seq(), Some(seqs[0]));
        // In-flight fixes are not handed out twice.
        let second = b.next_batch(100, 1 << 20).unwrap();
        assert_eq!(second.first_seq(), Some(seqs[4]));
        b.release(&second).unwrap();
        // Server stored only the first two.
        assert_eq!(b.ack(&batch, seqs[1]).unwrap(), 2);
        assert_eq!(b.pending(), 8);
        let next = b.next_batch(100, 1 << 20).unwrap();
        assert_eq!(next.first_seq(), Some(seqs[2]));
        assert_eq!(next.fixes.len(), 8);
        // Byte cap: one fix is always taken, then only what fits.
        b.release(&next).unwrap();
        let one = b.next_batch(100, 10).unwrap();
        assert_eq!(one.fixes.len(), 1);
        let per = one.json[0].len() + 1;
        b.release(&one).unwrap();
        let three = b.next_batch(100, per * 3).unwrap();
        assert_eq!(three.fixes.len(), 3);
    }

    #[test]
    fn crash_mid_upload_releases_in_flight_on_open() {
        let dir = TempDir::new("buf-crash");
        let mut b = open(&dir, BufferOptions::default());
        b.append(&(0..5).map(fix).collect::<Vec<_>>(), NOW).unwrap();
        let batch = b.next_batch(100, 1 << 20).unwrap();
        assert_eq!(batch.fixes.len(), 5);
        drop(b); // "crash" before the ack
        let mut b = open(&dir, BufferOptions::default());
        assert_eq!(b.pending(), 5);
        assert_eq!(b.next_batch(100, 1 << 20).unwrap().fixes.len(), 5);
    }

    #[test]
    fn count_and_age_bounds_evict_oldest_and_count() {
        let dir = TempDir::new("buf-evict");
        let opts = BufferOptions {
            max_fixes: 5,
            max_age: Duration::from_secs(3600),
            ..BufferOptions::default()
        };
        let mut b = open(&dir, opts);
        let (seqs, evicted) = b.append(&(0..8).map(fix).collect::<Vec<_>>(), NOW).unwrap();
        assert_eq!(evicted, 3);
        assert_eq!(b.pending(), 5);
        assert_eq!(
            b.next_batch(100, 1 << 20).unwrap().first_seq(),
            Some(seqs[3])
        );
        let aged = b.evict_expired(NOW + 3600 * 1000 + 5_500).unwrap();
        assert_eq!(aged, 3, "fixes 3, 4, 5 are older than an hour");
        let s = b.stats().unwrap();
        assert_eq!(s.evicted_total, 6);
        assert_eq!(s.pending, 2);
    }

    #[test]
    fn quarantine_moves_a_fix_out_for_good() {
        let dir = TempDir::new("buf-quar");
        let mut b = open(&dir, BufferOptions::default());
        let (seqs, _) = b.append(&(0..3).map(fix).collect::<Vec<_>>(), NOW).unwrap();
        assert!(b.quarantine(seqs[1], "lat out of range", NOW).unwrap());
        assert!(!b.quarantine(seqs[1], "again", NOW).unwrap());
        let batch = b.next_batch(100, 1 << 20).unwrap();
        let got: Vec<u64> = batch.fixes.iter().map(|f| f.seq).collect();
        assert_eq!(got, vec![seqs[0], seqs[2]]);
        let q = b.quarantined(10).unwrap();
        assert_eq!(q.len(), 1);
        assert_eq!(q[0].reason, "lat out of range");
        assert_eq!(b.stats().unwrap().quarantined_total, 1);
    }

    #[test]
    fn corrupt_file_is_a_clear_error_or_recreated_on_request() {
        let dir = TempDir::new("buf-corrupt");
        let path = dir.path().join("buf.db");
        std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
        let err = Buffer::open(&path, BufferOptions::default(), NOW).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        let opts = BufferOptions {
            recreate_if_corrupt: true,
            ..BufferOptions::default()
        };
        let b = Buffer::open(&path, opts, NOW).unwrap();
        assert!(b.recreated().is_some());
        assert_eq!(b.pending(), 0);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1);
    }

    #[test]
    fn foreign_sqlite_file_is_refused_untouched() {
        let dir = TempDir::new("buf-foreign");
        let path = dir.path().join("app.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE users (id INTEGER); INSERT INTO users VALUES (1);")
                .unwrap();
        }
        let opts = BufferOptions {
            recreate_if_corrupt: true,
            ..BufferOptions::default()
        };
        let err = Buffer::open(&path, opts, NOW).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        let c = Connection::open(&path).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1, "the foreign file is untouched");
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = TempDir::new("buf-newer");
        let path = dir.path().join("buf.db");
        drop(Buffer::open(&path, BufferOptions::default(), NOW).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let err = Buffer::open(&path, BufferOptions::default(), NOW).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }
}
