//! Any bytes a `waypost.v1.msgpack` client sends as a binary frame: the
//! decoder the server runs (MessagePack → JSON value → client frame) must
//! never panic, and whatever decodes must encode back and decode to the
//! same frame; a decoded value re-encodes as MessagePack that decodes to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypost_protocol::msgpack::{json_to_msgpack, msgpack_to_value};
use waypost_protocol::ClientFrame;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = msgpack_to_value(data) {
        let json = serde_json::to_string(&value).expect("a JSON value serializes");
        let again = json_to_msgpack(&json).expect("JSON transcodes");
        assert_eq!(msgpack_to_value(&again).expect("re-decodes"), value);
        if value.is_object() {
            if let Ok(frame) = serde_json::from_value::<ClientFrame>(value) {
                let bin = frame.to_msgpack().expect("encodes");
                assert_eq!(ClientFrame::from_msgpack(&bin).expect("decodes"), frame);
            }
        }
    }
    let _ = ClientFrame::from_msgpack(data);
});
