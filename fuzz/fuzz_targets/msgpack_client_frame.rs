//! Any bytes a `waypost.v1.msgpack` client sends as a binary frame, through
//! the decode path the server runs on them (`routes/ws/client.rs`):
//! MessagePack → JSON value (`msgpack_to_value`) → must be a map →
//! `ClientFrame` → the channel name of a `subscribe` / `unsubscribe`.
//!
//! Checked: no panic; the decoder accepts exactly what an independent
//! reading of the MessagePack spec (below) says it must: one whole value
//! (no trailing bytes, nothing truncated), containers nested at most 31
//! deep (the decoder's limit of 32 counts the value itself), no `bin`,
//! `ext` or reserved (0xc1) values, string map keys only (a `bin` key
//! holding UTF-8 after a map's first key reads as that string: serde_json
//! reads the first key as a string and the others as `String`, which takes
//! UTF-8 bytes; found by this target, harmless), valid UTF-8; a
//! decoded value re-encodes as MessagePack that decodes to the same value;
//! a decoded frame encodes back and decodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use waypost_protocol::msgpack::{json_to_msgpack, msgpack_to_value, MsgpackError};
use waypost_protocol::{Channel, ClientFrame};

/// Containers the decoder accepts inside each other (its depth limit is
/// 32 and counts down before each container: 31 fit).
const MAX_CONTAINERS: usize = 31;

fuzz_target!(|data: &[u8]| {
    let decoded = msgpack_to_value(data);
    let spec = spec_accepts(data);
    assert_eq!(
        decoded.is_ok(),
        spec,
        "decoder and spec disagree on {data:02x?}: {decoded:?}"
    );
    let Ok(value) = decoded else {
        return;
    };
    // One value and nothing after it: one more byte is refused as trailing,
    // one byte less is truncated.
    let mut longer = data.to_vec();
    longer.push(0xc0);
    assert!(matches!(
        msgpack_to_value(&longer),
        Err(MsgpackError::Trailing(1))
    ));
    assert!(msgpack_to_value(&data[..data.len() - 1]).is_err());
    // The value as JSON text transcodes back to the same value.
    let json = serde_json::to_string(&value).expect("a JSON value serializes");
    let again = json_to_msgpack(&json).expect("JSON transcodes");
    assert_eq!(msgpack_to_value(&again).expect("re-decodes"), value);
    // What the server does next: a map or a `bad_frame` close; a map that
    // is a frame is handled, anything else answered with `bad_frame`.
    let is_map = value.is_object();
    assert_eq!(ClientFrame::from_msgpack(data).is_ok(), {
        is_map && serde_json::from_value::<ClientFrame>(value.clone()).is_ok()
    });
    if !is_map {
        return;
    }
    if let Ok(frame) = serde_json::from_value::<ClientFrame>(value) {
        let bin = frame.to_msgpack().expect("encodes");
        assert_eq!(ClientFrame::from_msgpack(&bin).expect("decodes"), frame);
        if let ClientFrame::Subscribe { channel, .. } | ClientFrame::Unsubscribe { channel } =
            &frame
        {
            if let Ok(c) = Channel::parse(channel) {
                assert_eq!(&c.to_string(), channel);
            }
            let _ = Channel::from_name(channel);
        }
    }
});

/// Whether `data` is exactly one MessagePack value with a JSON form, per
/// the MessagePack spec (written here independently of rmp).
fn spec_accepts(data: &[u8]) -> bool {
    let mut r = Reader { data, pos: 0 };
    r.value(0, Key::No).is_some() && r.pos == data.len()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    No,
    First,
    Later,
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.data.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn len(&mut self, bytes: usize) -> Option<usize> {
        let b = self.take(bytes)?;
        Some(b.iter().fold(0usize, |n, &x| (n << 8) | usize::from(x)))
    }

    fn str(&mut self, n: usize) -> Option<()> {
        std::str::from_utf8(self.take(n)?).ok().map(|_| ())
    }

    /// One value at `depth` containers deep, or a map key.
    fn value(&mut self, depth: usize, key: Key) -> Option<()> {
        let m = *self.take(1)?.first()?;
        let is_str = matches!(m, 0xa0..=0xbf | 0xd9..=0xdb);
        if key != Key::No && !is_str {
            if key == Key::First {
                return None;
            }
            // bin 8/16/32 holding UTF-8 is a string key after the first.
            let n = match m {
                0xc4 => self.len(1)?,
                0xc5 => self.len(2)?,
                0xc6 => self.len(4)?,
                _ => return None,
            };
            return self.str(n);
        }
        match m {
            // nil, false, true, positive and negative fixint
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => Some(()),
            0xa0..=0xbf => self.str(usize::from(m & 0x1f)),
            0xd9 => {
                let n = self.len(1)?;
                self.str(n)
            }
            0xda => {
                let n = self.len(2)?;
                self.str(n)
            }
            0xdb => {
                let n = self.len(4)?;
                self.str(n)
            }
            // float 32 / 64, uint 8-64, int 8-64
            0xca | 0xd2 | 0xce => self.take(4).map(|_| ()),
            0xcb | 0xcf | 0xd3 => self.take(8).map(|_| ()),
            0xcc | 0xd0 => self.take(1).map(|_| ()),
            0xcd | 0xd1 => self.take(2).map(|_| ()),
            0x90..=0x9f => self.items(usize::from(m & 0x0f), depth, false),
            0xdc => {
                let n = self.len(2)?;
                self.items(n, depth, false)
            }
            0xdd => {
                let n = self.len(4)?;
                self.items(n, depth, false)
            }
            0x80..=0x8f => self.items(usize::from(m & 0x0f), depth, true),
            0xde => {
                let n = self.len(2)?;
                self.items(n, depth, true)
            }
            0xdf => {
                let n = self.len(4)?;
                self.items(n, depth, true)
            }
            // bin 8/16/32, ext, fixext, and the reserved 0xc1: no JSON form
            0xc1 | 0xc4..=0xc9 | 0xd4..=0xd8 => None,
        }
    }

    /// The `n` entries of an array (or the `n` key/value pairs of a map).
    fn items(&mut self, n: usize, depth: usize, map: bool) -> Option<()> {
        let depth = depth + 1;
        if depth > MAX_CONTAINERS {
            return None;
        }
        for i in 0..n {
            if map {
                self.value(depth, if i == 0 { Key::First } else { Key::Later })?;
            }
            self.value(depth, Key::No)?;
        }
        Some(())
    }
}
