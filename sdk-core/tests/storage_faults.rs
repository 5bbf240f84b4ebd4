//! Storage faults of the driver buffer on a real filesystem: the disk
//! filling up, a read-only filesystem, a file corrupted or truncated while
//! it holds pending fixes, and the wall clock jumping backwards or forwards.
//!
//! The promises checked: a failed write is an `Err` that says what happened
//! and records nothing half-way; every fix `append` acknowledged is still
//! there afterwards (same seq, same content) or counted as evicted by a
//! documented bound; the buffer works again once the fault clears.
//!
//! Disk-full and read-only cases mount a small tmpfs and need root (as in
//! `scripts/test`); elsewhere they print why they skip.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use waypost_sdk::driver::buffer::{Buffer, BufferOptions, StoreError};
use waypost_sdk::protocol::Fix;

const NOW: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 24 * 3600 * 1000;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "waypost-storage-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Removes the filler file and waits until the filesystem has its space
/// back. Unlinking frees the blocks only once no process holds the file
/// open, and a child forked by a parallel test (`mount`) between `fork` and
/// `exec` holds a copy of every descriptor open at that moment: in about one
/// run of fifteen the next SQLite write still found the disk full.
fn free_space(filler: &Path) {
    std::fs::remove_file(filler).unwrap();
    let probe = filler.with_extension("probe");
    for _ in 0..500 {
        let wrote = std::fs::write(&probe, vec![0u8; 256 * 1024]).is_ok();
        let _ = std::fs::remove_file(&probe);
        if wrote {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the filesystem did not get its space back within 5 s");
}

/// A tmpfs of `size` mounted on a fresh directory, unmounted on drop.
struct Tmpfs {
    dir: Dir,
}

impl Tmpfs {
    fn mount(tag: &str, size: &str) -> Option<Self> {
        let dir = Dir::new(tag);
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir.0)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self { dir }),
            Ok(o) => {
                eprintln!(
                    "SKIP {tag}: cannot mount a tmpfs ({}); run as root (scripts/test does)",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("SKIP {tag}: no mount command: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        &self.dir.0
    }

    fn remount(&self, mode: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(self.path())
            .status()
            .unwrap();
        assert!(st.success(), "remount {mode} failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.path()).status();
    }
}

fn fix(i: i64) -> Fix {
    let mut f = Fix::new(0, NOW + i * 1000, 52.0 + i as f64 * 1e-5, 13.0);
    f.accuracy_m = Some(5.0);
    f.speed_mps = Some(8.5);
    f.heading_deg = Some(90.0);
    f
}

/// Every pending fix, drained through `next_batch` and released again.
fn pending_seqs(b: &mut Buffer) -> Vec<(u64, i64)> {
    let batch = b.next_batch(1_000_000, usize::MAX).unwrap();
    b.release(&batch).unwrap();
    batch.fixes.iter().map(|f| (f.seq, f.ts)).collect()
}

/// The pending fixes as a second, read-only connection sees them (works
/// while the disk is full, when `next_batch` cannot mark in-flight).
fn stored_seqs(path: &Path) -> Vec<(u64, i64)> {
    let c = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap();
    let mut stmt = c
        .prepare("SELECT seq, body FROM fixes ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .unwrap();
    rows.map(|r| {
        let (seq, body) = r.unwrap();
        let f: Fix = serde_json::from_str(&body).unwrap();
        assert_eq!(f.seq, seq as u64, "stored body disagrees with its row");
        (f.seq, f.ts)
    })
    .collect()
}

fn is_full(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if f.code == rusqlite::ErrorCode::DiskFull)
}

#[test]
fn disk_full_is_a_clear_error_and_loses_nothing_recorded() {
    let Some(fs) = Tmpfs::mount("disk-full", "1m") else {
        return;
    };
    let path = fs.path().join("buf.db");
    let mut b = Buffer::open(&path, BufferOptions::default(), NOW).unwrap();
    // Leave a little room: fill the rest of the filesystem with a file.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![0u8; 700 * 1024]).unwrap();

    let mut recorded: Vec<(u64, i64)> = Vec::new();
    let mut i = 0i64;
    let err = loop {
        let batch: Vec<Fix> = (i..i + 20).map(fix).collect();
        match b.append(&batch, NOW) {
            Ok((seqs, evicted)) => {
                assert_eq!(evicted, 0);
                recorded.extend(seqs.into_iter().zip(batch.iter().map(|f| f.ts)));
                i += 20;
            }
            Err(e) => break e,
        }
        assert!(i < 1_000_000, "the disk never filled");
    };
    assert!(is_full(&err), "not a disk-full error: {err}");
    assert!(err.to_string().contains("full"), "unclear message: {err}");
    assert!(!recorded.is_empty());
    println!("disk full after {} fixes recorded: {err}", recorded.len());
    // Nothing of the failed append is there; everything before it is.
    assert_eq!(b.pending(), recorded.len() as u64);
    assert_eq!(stored_seqs(&path), recorded);
    // More attempts (and an upload attempt) keep failing cleanly without
    // disturbing the data.
    for _ in 0..3 {
        assert!(b.append(&[fix(i)], NOW).is_err());
    }
    if let Err(e) = b.next_batch(100, usize::MAX) {
        assert!(is_full(&e), "{e}");
    }
    assert_eq!(stored_seqs(&path), recorded);
    assert_eq!(b.pending(), recorded.len() as u64);

    // Space comes back: recording resumes with the next seq, nothing lost.
    free_space(&filler);
    let (seqs, _) = b.append(&[fix(i)], NOW).unwrap();
    assert_eq!(seqs, vec![recorded.last().unwrap().0 + 1]);
    recorded.push((seqs[0], fix(i).ts));
    drop(b);
    let mut b = Buffer::open(&path, BufferOptions::default(), NOW).unwrap();
    assert_eq!(pending_seqs(&mut b), recorded);
    // Acknowledging frees space in the file for reuse.
    let batch = b.next_batch(1_000_000, usize::MAX).unwrap();
    let last = batch.last_seq().unwrap();
    assert_eq!(b.ack(&batch, last).unwrap(), recorded.len() as u64);
    assert_eq!(b.pending(), 0);
}

#[test]
fn disk_full_while_acknowledging_keeps_the_fixes_for_a_resend() {
    let Some(fs) = Tmpfs::mount("disk-full-ack", "1m") else {
        return;
    };
    let path = fs.path().join("buf.db");
    let mut b = Buffer::open(&path, BufferOptions::default(), NOW).unwrap();
    let (seqs, _) = b
        .append(&(0..200).map(fix).collect::<Vec<_>>(), NOW)
        .unwrap();
    let batch = b.next_batch(50, usize::MAX).unwrap();
    let filler = fs.path().join("filler");
    // Fill every last byte.
    let mut size = 1024 * 1024;
    while std::fs::write(&filler, vec![0u8; size]).is_err() && size > 0 {
        size -= 4096;
    }
    match b.ack(&batch, batch.last_seq().unwrap()) {
        // SQLite may find room in pages it already has; then the ack holds.
        Ok(n) => assert_eq!(n, 50),
        Err(e) => {
            println!("ack on a full disk: {e}");
            // The ack did not happen: the fixes are still pending and are
            // sent again (the server de-duplicates by seq).
            assert_eq!(b.pending(), 200);
            free_space(&filler);
            drop(b);
            let mut b = Buffer::open(&path, BufferOptions::default(), NOW).unwrap();
            let got: Vec<u64> = pending_seqs(&mut b).into_iter().map(|(s, _)| s).collect();
            assert_eq!(got, seqs);
        }
    }
}

#[test]
fn read_only_filesystem_is_a_clear_error_and_the_file_is_untouched() {
    let Some(fs) = Tmpfs::mount("read-only", "4m") else {
        return;
    };
    let path = fs.path().join("buf.db");
    let mut b = Buffer::open(&path, BufferOptions::default(), NOW).unwrap();
    let (seqs, _) = b
        .append(&(0..100).map(fix).collect::<Vec<_>>(), NOW)
        .unwrap();
    drop(b);
    let before = std::fs::read(&path).unwrap();
    fs.remount("ro");
    let err = Buffer::open(&path, BufferOptions::default(), NOW).unwrap_err();
    println!("open on a read-only filesystem: {err}");
    let text = err.to_string().to_lowercase();
    assert!(
        text.contains("read") || text.contains("unable to open") || text.contains("i/o"),
        "unclear: {err}"
    );
    assert!(
        !matches!(err, StoreError::Corrupt { .. } | StoreError::Foreign { .. }),
        "a read-only file is not corrupt: {err}"
    );
    // Even asked to recreate a corrupt file, nothing is moved aside.
    let opts = BufferOptions {
        recreate_if_corrupt: true,
        ..BufferOptions::default()
    };
    assert!(Buffer::open(&path, opts, NOW).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before, "file changed");
    fs.remount("rw");
    let mut b = Buffer::open(&path, BufferOptions::default(), NOW).unwrap();
    let got: Vec<u64> = pending_seqs(&mut b).into_iter().map(|(s, _)| s).collect();
    assert_eq!(got, seqs);
    let (next, _) = b.append(&[fix(100)], NOW).unwrap();
    assert_eq!(next, vec![seqs.last().unwrap() + 1]);
}

/// Flips bytes in the middle of a buffer that holds fixes: the damage is an
/// error (on open or on the read that meets it), never fixes silently
/// changed or skipped; `recreate_if_corrupt` keeps the damaged file aside.
#[test]
fn corruption_under_pending_fixes_is_detected_not_silently_dropped() {
    for (name, damage) in [
        ("page-garbage", 0usize),
        ("truncated", 1),
        ("header-garbage", 2),
    ] {
        let dir = Dir::new(name);
        let path = dir.0.join("buf.db");
        let mut b = Buffer::open(&path, BufferOptions::default(), NOW).unwrap();
        let (seqs, _) = b
            .append(&(0..500).map(fix).collect::<Vec<_>>(), NOW)
            .unwrap();
        drop(b);
        let mut bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 16 * 1024, "file is {} bytes", bytes.len());
        match damage {
            0 => {
                let mid = bytes.len() / 2 / 4096 * 4096;
                for (k, byte) in bytes[mid..mid + 4096].iter_mut().enumerate() {
                    *byte = (k * 31 % 251) as u8;
                }
            }
            1 => bytes.truncate(bytes.len() / 2),
            _ => bytes[..100].fill(0xAB),
        }
        std::fs::write(&path, &bytes).unwrap();

        let outcome = Buffer::open(&path, BufferOptions::default(), NOW).and_then(|mut b| {
            let batch = b.next_batch(1_000_000, usize::MAX)?;
            Ok(batch.fixes.iter().map(|f| f.seq).collect::<Vec<_>>())
        });
        match outcome {
            Err(e) => {
                println!("{name}: {e}");
                let t = e.to_string();
                assert!(
                    t.contains("corrupt")
                        || t.contains("malformed")
                        || t.contains("not a database"),
                    "{name}: unclear error {t}"
                );
            }
            Ok(got) => panic!(
                "{name}: damaged file read as {} fixes (wrote {}) without an error",
                got.len(),
                seqs.len()
            ),
        }
        // The recreate option moves the file aside byte for byte.
        let opts = BufferOptions {
            recreate_if_corrupt: true,
            ..BufferOptions::default()
        };
        // Ten minutes later (a fresh file seeds its seqs from the clock).
        if let Ok(b) = Buffer::open(&path, opts, NOW + 600_000) {
            if b.recreated().is_some() {
                let aside: Vec<PathBuf> = std::fs::read_dir(&dir.0)
                    .unwrap()
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().contains(".corrupt-"))
                    .collect();
                assert_eq!(aside.len(), 1, "{name}");
                assert_eq!(std::fs::read(&aside[0]).unwrap(), bytes, "{name}");
                // A fresh file seeds seqs from the clock, above the old ones.
                assert!(
                    b.stats().unwrap().next_seq > *seqs.last().unwrap(),
                    "{name}"
                );
            }
        }
    }
}

#[test]
fn clock_jumping_backwards_never_reuses_a_seq_nor_evicts() {
    let dir = Dir::new("clock-back");
    let path = dir.0.join("buf.db");
    let mut b = Buffer::open(&path, BufferOptions::default(), NOW).unwrap();
    let (a, _) = b.append(&[fix(0), fix(1)], NOW).unwrap();
    // The phone's clock goes back a day (and then a year).
    let (c, ev) = b.append(&[fix(-DAY_MS / 1000)], NOW - DAY_MS).unwrap();
    assert_eq!(ev, 0);
    let (d, ev) = b
        .append(&[fix(-365 * DAY_MS / 1000)], NOW - 365 * DAY_MS)
        .unwrap();
    assert_eq!(ev, 0);
    assert_eq!(b.evict_expired(NOW - 365 * DAY_MS).unwrap(), 0);
    let all: Vec<u64> = [a, c, d].concat();
    assert!(all.windows(2).all(|w| w[1] == w[0] + 1), "{all:?}");
    drop(b);
    // Reopened while the clock is still behind: seqs continue, they are not
    // re-seeded from the (earlier) clock.
    let mut b = Buffer::open(&path, BufferOptions::default(), NOW - 365 * DAY_MS).unwrap();
    let (e, _) = b.append(&[fix(5)], NOW - 365 * DAY_MS).unwrap();
    assert_eq!(e, vec![all.last().unwrap() + 1]);
    // Upload order is seq order, whatever the timestamps say.
    let got: Vec<u64> = pending_seqs(&mut b).into_iter().map(|(s, _)| s).collect();
    assert_eq!(got, [all, e].concat());
}

#[test]
fn clock_jumping_forwards_evicts_only_past_max_age_and_counts_it() {
    let dir = Dir::new("clock-forward");
    let path = dir.0.join("buf.db");
    let opts = BufferOptions {
        max_age: Duration::from_secs(2 * 24 * 3600),
        ..BufferOptions::default()
    };
    let mut b = Buffer::open(&path, opts.clone(), NOW).unwrap();
    let (seqs, _) = b
        .append(&(0..10).map(fix).collect::<Vec<_>>(), NOW)
        .unwrap();
    let batch = b.next_batch(4, usize::MAX).unwrap();
    assert_eq!(b.ack(&batch, batch.last_seq().unwrap()).unwrap(), 4);
    // An hour ahead, then a day: within max_age, nothing goes.
    assert_eq!(b.evict_expired(NOW + 3600 * 1000).unwrap(), 0);
    assert_eq!(b.evict_expired(NOW + DAY_MS).unwrap(), 0);
    drop(b);
    let mut b = Buffer::open(&path, opts.clone(), NOW + DAY_MS).unwrap();
    let got: Vec<u64> = pending_seqs(&mut b).into_iter().map(|(s, _)| s).collect();
    assert_eq!(got, seqs[4..]);
    // Past max_age the bound applies: evicted, counted, acked count intact.
    let evicted = b.evict_expired(NOW + 3 * DAY_MS).unwrap();
    assert_eq!(evicted, 6);
    let stats = b.stats().unwrap();
    assert_eq!(stats.evicted_total, 6);
    assert_eq!(stats.acked_total, 4);
    assert_eq!(stats.pending, 0);
    // The clock comes back: seqs still go on from where they were.
    let (next, _) = b.append(&[fix(20)], NOW).unwrap();
    assert_eq!(next, vec![seqs.last().unwrap() + 1]);
}
