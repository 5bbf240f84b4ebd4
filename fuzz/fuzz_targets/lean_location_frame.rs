//! Any bytes a `waypost.v1.lean` server could send as a binary frame: the
//! decoder the SDK runs on them (MessagePack → JSON value → lean location
//! frame expanded against the last one held on the channel) must never
//! panic; a frame that expands makes a lean frame again (full and as a
//! delta against the held one) that expands to the same `fix.seq` and
//! fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::json;
use waypost_protocol::lean::{encode, expand, is_location};
use waypost_protocol::msgpack::msgpack_to_value;

fuzz_target!(|data: &[u8]| {
    let held = json!({"type":"location","channel":"tracking:d","driver_id":"d",
        "fix":{"seq":7,"ts":1,"lat":52.5,"lon":13.4,"speed_mps":3.5,"battery":0.5}});
    let Ok(value) = msgpack_to_value(data) else {
        return;
    };
    if !is_location(&value) {
        return;
    }
    for base in [None, Some(&held)] {
        let Ok(full) = expand(value.clone(), base) else {
            continue;
        };
        for against in [None, Some(&held)] {
            if let Ok(bytes) = encode(&full, against) {
                let lean = msgpack_to_value(&bytes).expect("a lean frame decodes");
                let again = expand(lean, against).expect("a lean frame expands");
                assert_eq!(again["fix"]["seq"], full["fix"]["seq"]);
                let keys = |v: &serde_json::Value| {
                    let mut k: Vec<String> = v["fix"]
                        .as_object()
                        .map(|m| m.keys().cloned().collect())
                        .unwrap_or_default();
                    k.sort();
                    k
                };
                assert_eq!(keys(&again), keys(&full));
            }
        }
    }
});
