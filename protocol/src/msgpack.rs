//! The `waypost.v1.msgpack` WebSocket encoding: every frame, both
//! directions, as one binary WebSocket message holding a MessagePack map
//! with exactly the field names and values of the JSON frame (strings stay
//! strings, integers integers, coordinates 64-bit floats).
//!
//! The encoding is defined by transcoding: a MessagePack frame is the JSON
//! frame's value written as MessagePack ([`json_to_msgpack`]), and a
//! MessagePack frame reads back as that JSON value ([`msgpack_to_value`]),
//! so the two encodings can never carry different content.

use serde::de::Deserialize;

use crate::{ClientFrame, ServerFrame};

/// The `Sec-WebSocket-Protocol` value that selects the encoding.
pub const MSGPACK_PROTOCOL: &str = "waypost.v1.msgpack";

/// Nesting a decoded frame may have (frames nest three levels at most; the
/// JSON decoder allows 128).
const MAX_DEPTH: usize = 32;

/// Why bytes are not a MessagePack frame (or JSON not transcodable).
#[derive(Debug, thiserror::Error)]
pub enum MsgpackError {
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid MessagePack: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    #[error("invalid MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("invalid MessagePack: {0} bytes after the frame")]
    Trailing(usize),
    #[error("frames must be maps")]
    NotAMap,
}

/// One JSON text (a frame) written as MessagePack: objects become maps with
/// the same string keys, in the same order.
pub fn json_to_msgpack(json: &str) -> Result<Vec<u8>, MsgpackError> {
    let mut out = Vec::with_capacity(json.len());
    let mut de = serde_json::Deserializer::from_str(json);
    {
        let mut ser = rmp_serde::Serializer::new(&mut out);
        serde_transcode::transcode(&mut de, &mut ser)?;
    }
    de.end()?;
    Ok(out)
}

/// One MessagePack value read back as the JSON value it stands for: the
/// whole input, one value, no trailing bytes, string map keys only (binary,
/// extension types and non-string keys have no JSON form and are refused;
/// but a binary key holding UTF-8 after a map's first key reads as that
/// string, as serde_json reads those keys as `String`, which takes UTF-8
/// bytes; NaN and infinities read as `null`, as JSON has none).
pub fn msgpack_to_value(bytes: &[u8]) -> Result<serde_json::Value, MsgpackError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    de.set_max_depth(MAX_DEPTH);
    let value = serde_json::Value::deserialize(&mut de)?;
    let read = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if read < bytes.len() {
        return Err(MsgpackError::Trailing(bytes.len() - read));
    }
    Ok(value)
}

/// A MessagePack frame as JSON text, keys in their order (SDKs, tools,
/// load generators that read JSON). Transcoded directly, so more lenient
/// than [`msgpack_to_value`]: integer keys become strings, binary values
/// arrays of bytes.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<String, MsgpackError> {
    let mut de = rmp_serde::Deserializer::new(std::io::Cursor::new(bytes));
    de.set_max_depth(MAX_DEPTH);
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 2);
    {
        let mut ser = serde_json::Serializer::new(&mut out);
        serde_transcode::transcode(&mut de, &mut ser)
            .map_err(|e| MsgpackError::Decode(rmp_serde::decode::Error::Syntax(e.to_string())))?;
    }
    let read = usize::try_from(de.position()).unwrap_or(usize::MAX);
    if read < bytes.len() {
        return Err(MsgpackError::Trailing(bytes.len() - read));
    }
    String::from_utf8(out)
        .map_err(|e| MsgpackError::Decode(rmp_serde::decode::Error::Syntax(e.to_string())))
}

impl ClientFrame {
    /// Reads a client frame sent as MessagePack.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, MsgpackError> {
        let value = msgpack_to_value(bytes)?;
        if !value.is_object() {
            return Err(MsgpackError::NotAMap);
        }
        Ok(serde_json::from_value(value)?)
    }

    /// The frame as MessagePack (what an SDK sends on a
    /// `waypost.v1.msgpack` connection).
    pub fn to_msgpack(&self) -> Result<Vec<u8>, MsgpackError> {
        json_to_msgpack(&serde_json::to_string(self)?)
    }
}

impl ServerFrame {
    /// The frame as MessagePack (the server transcodes each dispatched
    /// frame's JSON text once instead; this is for single replies).
    pub fn to_msgpack(&self) -> Vec<u8> {
        // Transcoding JSON the serializer just wrote cannot fail.
        json_to_msgpack(&self.to_json()).unwrap_or_default()
    }

    /// Reads a server frame sent as MessagePack.
    pub fn from_msgpack(bytes: &[u8]) -> Result<Self, MsgpackError> {
        let value = msgpack_to_value(bytes)?;
        if !value.is_object() {
            return Err(MsgpackError::NotAMap);
        }
        Ok(serde_json::from_value(value)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_keep_their_field_names_and_values() {
        let json = r#"{"type":"location","channel":"tracking:d1","driver_id":"d1","fix":{"seq":18446744073709551615,"ts":1700000000000,"lat":52.520008,"lon":-13.404954,"speed":3.5,"heading":null}}"#;
        let bin = json_to_msgpack(json).unwrap();
        assert!(bin.len() < json.len(), "{} vs {}", bin.len(), json.len());
        // A map (fixmap 0x8N) whose first key is "type".
        assert_eq!(bin[0] & 0xf0, 0x80);
        assert_eq!(&bin[1..6], b"\xa4type");
        let back = msgpack_to_value(&bin).unwrap();
        let want: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(back, want);
        let text = msgpack_to_json(&bin).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            want
        );
    }

    #[test]
    fn client_frames_round_trip() {
        for json in [
            r#"{"type":"subscribe","channel":"chat:r1","after":4}"#,
            r#"{"type":"send","room":"r1","client_id":"c-1","body":"hi","attachments":[{"url":"https://x/a.png","mime":"image/png","size":10}]}"#,
            r#"{"type":"edit","room":"r1","seq":3,"body":"fixed"}"#,
            r#"{"type":"delete","room":"r1","seq":3}"#,
            r#"{"type":"receipt","room":"r1","seq":3,"kind":"read"}"#,
            r#"{"type":"typing","room":"r1"}"#,
            r#"{"type":"ping","id":"p"}"#,
        ] {
            let frame: ClientFrame = serde_json::from_str(json).unwrap();
            let bin = frame.to_msgpack().unwrap();
            assert_eq!(ClientFrame::from_msgpack(&bin).unwrap(), frame, "{json}");
        }
    }

    #[test]
    fn bad_input_is_refused() {
        // Not a map.
        assert!(matches!(
            ClientFrame::from_msgpack(&json_to_msgpack("[1,2]").unwrap()),
            Err(MsgpackError::NotAMap)
        ));
        // Trailing bytes.
        let mut bin = json_to_msgpack(r#"{"type":"ping"}"#).unwrap();
        assert!(ClientFrame::from_msgpack(&bin).is_ok());
        bin.push(0xc0);
        assert!(matches!(
            ClientFrame::from_msgpack(&bin),
            Err(MsgpackError::Trailing(1))
        ));
        // Truncated, empty, binary payloads, integer keys, deep nesting.
        assert!(msgpack_to_value(&[0x81, 0xa4]).is_err());
        assert!(msgpack_to_value(&[]).is_err());
        assert!(msgpack_to_value(&[0xc4, 0x01, 0x00]).is_err());
        assert!(msgpack_to_value(&[0x81, 0x01, 0x02]).is_err());
        let nested = |n: usize| [vec![0x91; n], vec![0xc0]].concat();
        assert!(msgpack_to_value(&nested(10)).is_ok());
        assert!(msgpack_to_value(&nested(40)).is_err());
        // A JSON text is not MessagePack.
        assert!(ClientFrame::from_msgpack(br#"{"type":"ping"}"#).is_err());
    }

    /// Found by `fuzz/fuzz_targets/msgpack_client_frame.rs`: serde_json's
    /// default float parser reads some numbers back one ulp off (e.g.
    /// -9.943599874688561e303 as -9.94359987468856e303), so a MessagePack
    /// frame transcoded from the JSON text could carry another number than
    /// the JSON frame; serde_json's `float_roundtrip` feature (workspace
    /// Cargo.toml) makes the parse exact.
    #[test]
    fn floats_keep_every_bit_through_the_json_text() {
        for x in [
            -9.943599874688561e303_f64,
            52.520008,
            -13.404954,
            0.1 + 0.2,
            2.0 / 3.0,
            1e23,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
        ] {
            let json = serde_json::json!({ "type": "ping", "id": x }).to_string();
            let bin = json_to_msgpack(&json).unwrap();
            assert_eq!(
                msgpack_to_value(&bin).unwrap()["id"]
                    .as_f64()
                    .map(f64::to_bits),
                Some(x.to_bits()),
                "{json}"
            );
            let frame = ServerFrame::Location {
                channel: "tracking:d1".into(),
                driver_id: "d1".into(),
                fix: serde_json::from_value(
                    serde_json::json!({ "seq": 1, "ts": 1, "lat": x, "lon": x }),
                )
                .unwrap(),
            };
            assert_eq!(
                ServerFrame::from_msgpack(&frame.to_msgpack()).unwrap(),
                frame
            );
        }
    }

    /// The limits the fuzz target (`fuzz/fuzz_targets/msgpack_client_frame.rs`)
    /// checks against its own reading of the spec, at their edges.
    #[test]
    fn limits_hold_at_their_edges() {
        // 31 containers inside each other decode, 32 do not (the map of
        // the frame counts).
        let ping = |arrays: usize| {
            let mut b = json_to_msgpack(r#"{"type":"ping","id":null}"#).unwrap();
            b.pop();
            [b, vec![0x91; arrays], vec![0xc0]].concat()
        };
        assert!(ClientFrame::from_msgpack(&ping(30)).is_ok());
        assert!(matches!(
            ClientFrame::from_msgpack(&ping(31)),
            Err(MsgpackError::Decode(
                rmp_serde::decode::Error::DepthLimitExceeded
            ))
        ));
        // ext, fixext and bin have no JSON form, inside a frame too.
        for value in [
            &[0xd4, 0x01, 0x00][..],
            &[0xc7, 0x01, 0x05, 0x00],
            &[0xc5, 0x00, 0x01, 0x00],
        ] {
            let mut b = json_to_msgpack(r#"{"type":"ping","id":null}"#).unwrap();
            b.pop();
            b.extend_from_slice(value);
            assert!(ClientFrame::from_msgpack(&b).is_err(), "{value:02x?}");
        }
        // The reserved marker, strings and keys that are not UTF-8, a
        // length longer than the input (no allocation of it).
        assert!(msgpack_to_value(&[0xc1]).is_err());
        assert!(msgpack_to_value(&[0xa1, 0xff]).is_err());
        assert!(msgpack_to_value(&[0x81, 0xa1, 0xff, 0xc0]).is_err());
        assert!(msgpack_to_value(&[0xdb, 0xff, 0xff, 0xff, 0xff, 0x61]).is_err());
        assert!(msgpack_to_value(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0]).is_err());
        // f32 values and str8 keys are ordinary values.
        let mut f32_id = json_to_msgpack(r#"{"type":"ping","id":null}"#).unwrap();
        f32_id.pop();
        f32_id.extend_from_slice(&[0xca, 0x3f, 0xc0, 0x00, 0x00]);
        assert_eq!(
            ClientFrame::from_msgpack(&f32_id).unwrap(),
            ClientFrame::Ping {
                id: Some(serde_json::json!(1.5))
            }
        );
        assert_eq!(
            ClientFrame::from_msgpack(b"\x81\xd9\x04type\xa4ping").unwrap(),
            ClientFrame::Ping { id: None }
        );
        // A binary key holding UTF-8 after the first key of a map reads as
        // that string (serde_json reads the first key as a string, the
        // others as `String`, which takes UTF-8 bytes: fuzz finding,
        // harmless, pinned here); a first binary key or one that is not
        // UTF-8 is refused.
        assert_eq!(
            ClientFrame::from_msgpack(b"\x82\xa4type\xa4ping\xc4\x02id\x01").unwrap(),
            ClientFrame::Ping {
                id: Some(serde_json::json!(1))
            }
        );
        assert!(msgpack_to_value(b"\x81\xc4\x01a\x00").is_err());
        assert!(msgpack_to_value(b"\x82\xa1a\x00\xc4\x01\xff\x00").is_err());
    }

    /// The cost of the shared binary form against the JSON text it is made
    /// from (`cargo test --release -p waypost-protocol --lib transcode_cost
    /// -- --ignored --nocapture`; BENCHMARKS.md, issue 22).
    #[test]
    #[ignore]
    fn transcode_cost() {
        let fix: crate::Fix = serde_json::from_str(
            r#"{"seq":1234,"ts":1796645371772,"lat":52.09731239,"lon":6.64166476,"accuracy_m":4.5,"speed_mps":0.784,"altitude_m":6.8}"#,
        )
        .unwrap();
        let frame = ServerFrame::Location {
            channel: "tracking:d-7f3a9c21".into(),
            driver_id: "d-7f3a9c21".into(),
            fix,
        };
        let n = 200_000u32;
        let t = std::time::Instant::now();
        let mut len = 0;
        for _ in 0..n {
            len += std::hint::black_box(&frame).to_json().len();
        }
        let json_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        let text = frame.to_json();
        let t = std::time::Instant::now();
        for _ in 0..n {
            len += json_to_msgpack(std::hint::black_box(&text)).unwrap().len();
        }
        let msgpack_ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!(
            "location frame: JSON serialize {json_ns:.0} ns, JSON→MessagePack {msgpack_ns:.0} ns ({} → {} bytes) [{len}]",
            text.len(),
            json_to_msgpack(&text).unwrap().len()
        );
    }
}
