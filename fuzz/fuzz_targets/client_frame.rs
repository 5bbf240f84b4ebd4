//! Any bytes a WebSocket client sends: parsing a frame and its channel name
//! must never panic, and whatever parses must serialize back and re-parse to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypost_protocol::{Channel, ClientFrame, ServerFrame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(frame) = serde_json::from_str::<ClientFrame>(text) {
        let json = serde_json::to_string(&frame).expect("serializes");
        let back: ClientFrame = serde_json::from_str(&json).expect("re-parses");
        assert_eq!(back, frame);
        if let ClientFrame::Subscribe { channel, .. } | ClientFrame::Unsubscribe { channel } = &frame {
            if let Ok(c) = Channel::parse(channel) {
                assert_eq!(&c.to_string(), channel);
            }
        }
    }
    let _ = Channel::parse(text);
    if let Ok(frame) = serde_json::from_str::<ServerFrame>(text) {
        let _ = frame.to_json();
    }
});
