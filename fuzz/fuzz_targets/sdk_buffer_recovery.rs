//! The driver SDK's SQLite buffer opened on a damaged file: a valid buffer
//! with pending fixes is corrupted at fuzzer-chosen offsets (or truncated),
//! then opened with and without `recreate_if_corrupt`. Opening must return
//! a buffer or a clear error, never panic; a buffer that opens must keep
//! working (stats, batches, appends, acks).
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use waypost_protocol::Fix;
use waypost_sdk::driver::buffer::{Buffer, BufferOptions};

const NOW: i64 = 1_700_000_000_000;

/// Bytes of a healthy buffer file holding a few pending fixes.
fn template() -> &'static Vec<u8> {
    static T: OnceLock<Vec<u8>> = OnceLock::new();
    T.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("wp-fuzz-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("buffer.db");
        let _ = std::fs::remove_file(&path);
        {
            let mut b = Buffer::open(&path, BufferOptions::default(), NOW).expect("open template");
            let fixes: Vec<Fix> = (0..20)
                .map(|i| Fix::new(0, NOW + i * 1000, 52.0 + i as f64 * 1e-4, 13.0))
                .collect();
            b.append(&fixes, NOW).expect("append");
        }
        // Fold the WAL into the main file so the file alone is the state.
        let conn = rusqlite_checkpoint(&path);
        drop(conn);
        std::fs::read(&path).expect("read template")
    })
}

fn rusqlite_checkpoint(path: &Path) -> Option<()> {
    // Reopening and dropping the buffer checkpoints on close.
    Buffer::open(path, BufferOptions::default(), NOW).ok().map(drop)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, edits)) = data.split_first() else {
        return;
    };
    let mut bytes = template().clone();
    if mode & 1 == 1 && edits.len() >= 2 {
        let keep = (usize::from(u16::from_le_bytes([edits[0], edits[1]])) * 8) % (bytes.len() + 1);
        bytes.truncate(keep);
    }
    for chunk in edits.chunks(3) {
        if let [a, b, v] = chunk {
            if bytes.is_empty() {
                break;
            }
            let at = (usize::from(u16::from_le_bytes([*a, *b])) * 7) % bytes.len();
            bytes[at] = *v;
        }
    }
    let dir: PathBuf = std::env::temp_dir().join(format!("wp-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("buffer.db");
    std::fs::write(&path, &bytes).expect("write case");
    let opts = BufferOptions {
        recreate_if_corrupt: mode & 2 == 2,
        ..BufferOptions::default()
    };
    if let Ok(mut buffer) = Buffer::open(&path, opts, NOW) {
        let _ = buffer.stats();
        if let Ok(batch) = buffer.next_batch(10, 64 * 1024) {
            if let Some(high) = batch.last_seq() {
                let _ = buffer.ack(&batch, high);
            } else {
                let _ = buffer.release(&batch);
            }
        }
        let _ = buffer.append(&[Fix::new(0, NOW + 60_000, 52.1, 13.1)], NOW + 60_000);
        let _ = buffer.stats();
    }
});
