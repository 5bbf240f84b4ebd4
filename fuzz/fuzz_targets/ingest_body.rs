//! Any ingest body, plain or claimed gzip: parsing and validation must never
//! panic, and an accepted batch must satisfy every documented invariant.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use waypost_server::config::Limits;
use waypost_server::routes::ingest::parse_batch;

const NOW: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let encoding = match selector % 3 {
        0 => None,
        1 => Some("gzip"),
        _ => Some("identity"),
    };
    let limits = Limits::default();
    if let Ok((req, high_seq)) = parse_batch(encoding, Bytes::copy_from_slice(body), &limits, NOW) {
        assert!(!req.fixes.is_empty() && req.fixes.len() <= limits.max_batch_fixes);
        assert!(req.fixes.windows(2).all(|w| w[0].seq < w[1].seq));
        assert_eq!(req.fixes.last().map(|f| f.seq), Some(high_seq));
        for f in &req.fixes {
            assert!(f.validate(NOW).is_ok());
        }
    }
});
