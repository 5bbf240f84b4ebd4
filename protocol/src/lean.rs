//! The `waypost.v1.lean` WebSocket encoding: MessagePack binary frames
//! exactly as `waypost.v1.msgpack` ([`crate::msgpack`]), except `location`
//! frames, which are lean:
//!
//! - `fix.lat`/`fix.lon` become `fix.lat_e7`/`fix.lon_e7`: integers, degrees
//!   × 10^7, rounded (about 1 cm); every other number whose value is whole
//!   is written as a MessagePack integer (`8.0` → `8`);
//! - with `"base": <seq>` (the `fix.seq` of the previous location frame the
//!   connection received on the same channel) the frame omits every field
//!   other than `type`, `channel`, `fix.seq`, `fix.ts`, `fix.lat_e7` and
//!   `fix.lon_e7` whose value equals the base frame's; a field the base had
//!   and this frame has not is sent as nil. Without `base` the frame is
//!   full.
//!
//! [`encode`] writes a lean frame from the JSON value of a location frame
//! (and of its base); [`expand`] reads one back into the JSON value of the
//! full frame, given the last location frame the reader holds on the
//! channel.

use serde_json::{Map, Number, Value};

/// The `Sec-WebSocket-Protocol` value that selects the encoding.
pub const LEAN_PROTOCOL: &str = "waypost.v1.lean";

/// Degrees per `*_e7` unit, inverted.
const E7: f64 = 1e7;
/// Whole floats up to this magnitude are written as integers (beyond it a
/// float may not be an exact integer of its own).
const MAX_WHOLE: f64 = 9_007_199_254_740_992.0; // 2^53

/// Fields a lean frame always carries (never delta-omitted).
const FRAME_KEYS: [&str; 3] = ["type", "channel", "fix"];
const FIX_KEYS: [&str; 4] = ["seq", "ts", "lat", "lon"];

/// Why a frame could not be made lean or read back.
#[derive(Debug, thiserror::Error)]
pub enum LeanError {
    #[error("not a location frame: {0}")]
    NotLocation(&'static str),
    /// A delta frame whose base is not the last location frame held on the
    /// channel (a protocol error: the reader must resynchronise).
    #[error("lean frame on {channel} has base {base}, the last fix held there is {held:?}")]
    UnknownBase {
        channel: String,
        base: u64,
        held: Option<u64>,
    },
    #[error("invalid MessagePack: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
}

/// Whether `frame` is a lean (or JSON) location frame: its type.
pub fn is_location(frame: &Value) -> bool {
    frame.get("type").and_then(Value::as_str) == Some("location")
}

fn fix_of(frame: &Value) -> Result<&Map<String, Value>, LeanError> {
    frame
        .get("fix")
        .and_then(Value::as_object)
        .ok_or(LeanError::NotLocation("no fix"))
}

fn seq_of(fix: &Map<String, Value>) -> Option<u64> {
    fix.get("seq").and_then(Value::as_u64)
}

/// Degrees as `*_e7`: rounded to the nearest 10^-7 degree.
pub fn to_e7(deg: f64) -> i64 {
    (deg * E7).round() as i64
}

/// `*_e7` back to degrees (exact for coordinates of at most 7 decimals:
/// the division is correctly rounded).
pub fn from_e7(e7: i64) -> f64 {
    e7 as f64 / E7
}

/// A number whose value is whole as an integer; anything else as is.
fn whole(v: &Value) -> Value {
    if let Value::Number(n) = v {
        if n.is_f64() {
            if let Some(f) = n.as_f64() {
                if f.fract() == 0.0 && f.abs() < MAX_WHOLE {
                    return Value::Number(Number::from(f as i64));
                }
            }
        }
    }
    v.clone()
}

/// The lean MessagePack form of the location frame `frame` (its JSON
/// value). With `base` (the previous location frame this connection got on
/// the channel) it is a delta against it; a base that does not come before
/// `frame` (another device: its seq is not lower) is ignored and the frame
/// is full.
pub fn encode(frame: &Value, base: Option<&Value>) -> Result<Vec<u8>, LeanError> {
    let obj = frame
        .as_object()
        .ok_or(LeanError::NotLocation("not a map"))?;
    if !is_location(frame) {
        return Err(LeanError::NotLocation("type"));
    }
    let fix = fix_of(frame)?;
    let seq = seq_of(fix).ok_or(LeanError::NotLocation("no fix.seq"))?;
    let lat = fix.get("lat").and_then(Value::as_f64);
    let lon = fix.get("lon").and_then(Value::as_f64);
    let (Some(lat), Some(lon)) = (lat, lon) else {
        return Err(LeanError::NotLocation("no fix.lat/lon"));
    };
    let base = base.and_then(|b| {
        let bobj = b.as_object()?;
        let bfix = bobj.get("fix")?.as_object()?;
        let bseq = seq_of(bfix)?;
        (bseq < seq).then_some((bseq, bobj, bfix))
    });

    // Keys in the order written: `type` first (readers sniff it), then
    // `channel`, `base`, the rest, `fix` last; in `fix` `seq`, `ts`, the
    // coordinates, the rest.
    let mut out = Ordered::default();
    out.insert("type", obj["type"].clone());
    if let Some(channel) = obj.get("channel") {
        out.insert("channel", channel.clone());
    }
    if let Some((bseq, _, _)) = base {
        out.insert("base", Value::from(bseq));
    }
    for (k, v) in obj {
        if FRAME_KEYS.contains(&k.as_str()) || k == "base" {
            continue;
        }
        if base.is_some_and(|(_, b, _)| b.get(k) == Some(v)) {
            continue;
        }
        out.insert(k, whole(v));
    }
    if let Some((_, b, _)) = base {
        for k in b.keys() {
            if !FRAME_KEYS.contains(&k.as_str()) && k != "base" && !obj.contains_key(k) {
                out.insert(k, Value::Null);
            }
        }
    }

    let mut lean_fix = Ordered::default();
    lean_fix.insert("seq", Value::from(seq));
    if let Some(ts) = fix.get("ts") {
        lean_fix.insert("ts", whole(ts));
    }
    lean_fix.insert("lat_e7", Value::from(to_e7(lat)));
    lean_fix.insert("lon_e7", Value::from(to_e7(lon)));
    for (k, v) in fix {
        if FIX_KEYS.contains(&k.as_str()) {
            continue;
        }
        if base.is_some_and(|(_, _, bf)| bf.get(k) == Some(v)) {
            continue;
        }
        lean_fix.insert(k, whole(v));
    }
    if let Some((_, _, bf)) = base {
        for k in bf.keys() {
            if !FIX_KEYS.contains(&k.as_str()) && !fix.contains_key(k) {
                lean_fix.insert(k, Value::Null);
            }
        }
    }
    let frame = Frame {
        head: out,
        fix: lean_fix,
    };
    Ok(rmp_serde::to_vec(&frame)?)
}

/// A map whose keys are written in insertion order.
#[derive(Default)]
struct Ordered<'a>(Vec<(&'a str, Value)>);

impl<'a> Ordered<'a> {
    fn insert(&mut self, k: &'a str, v: Value) {
        self.0.push((k, v));
    }
}

impl serde::Serialize for Ordered<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// A lean frame: its top-level fields, then `fix`.
struct Frame<'a> {
    head: Ordered<'a>,
    fix: Ordered<'a>,
}

impl serde::Serialize for Frame<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.head.0.len() + 1))?;
        for (k, v) in &self.head.0 {
            map.serialize_entry(k, v)?;
        }
        map.serialize_entry("fix", &self.fix)?;
        map.end()
    }
}

/// The full location frame (its JSON value, `lat`/`lon` in degrees) that
/// the lean frame `lean` (decoded MessagePack) stands for. `held` is the
/// last location frame the reader holds on the frame's channel (the full
/// frame [`expand`] returned for it); a `base` that is not its `fix.seq`
/// is [`LeanError::UnknownBase`].
pub fn expand(lean: Value, held: Option<&Value>) -> Result<Value, LeanError> {
    let Value::Object(mut obj) = lean else {
        return Err(LeanError::NotLocation("not a map"));
    };
    let Some(Value::Object(lean_fix)) = obj.remove("fix") else {
        return Err(LeanError::NotLocation("no fix"));
    };
    let (mut frame, mut fix) = match obj.remove("base") {
        None | Some(Value::Null) => (Map::new(), Map::new()),
        Some(base) => {
            let held_seq = held.and_then(|h| fix_of(h).ok()).and_then(seq_of);
            let base_seq = base.as_u64();
            match (held, base_seq) {
                (Some(Value::Object(h)), Some(b)) if held_seq == Some(b) => {
                    let mut h = h.clone();
                    let fix = match h.remove("fix") {
                        Some(Value::Object(f)) => f,
                        _ => Map::new(),
                    };
                    (h, fix)
                }
                _ => {
                    return Err(LeanError::UnknownBase {
                        channel: obj
                            .get("channel")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        base: base_seq.unwrap_or(0),
                        held: held_seq,
                    })
                }
            }
        }
    };
    for (k, v) in obj {
        if v.is_null() {
            frame.remove(&k);
        } else {
            frame.insert(k, v);
        }
    }
    let has_lat = lean_fix.contains_key("lat_e7");
    let has_lon = lean_fix.contains_key("lon_e7");
    for (k, v) in lean_fix {
        match k.as_str() {
            "lat" | "lon" => return Err(LeanError::NotLocation("degrees in a lean frame")),
            "lat_e7" | "lon_e7" => {
                let e7 = v
                    .as_i64()
                    .ok_or(LeanError::NotLocation("fix.*_e7 not an integer"))?;
                let key = if k == "lat_e7" { "lat" } else { "lon" };
                let deg =
                    Number::from_f64(from_e7(e7)).ok_or(LeanError::NotLocation("fix.*_e7"))?;
                fix.insert(key.into(), Value::Number(deg));
            }
            _ if v.is_null() => {
                fix.remove(&k);
            }
            _ => {
                fix.insert(k, v);
            }
        }
    }
    if !(has_lat && has_lon) {
        return Err(LeanError::NotLocation("no fix.lat_e7/lon_e7"));
    }
    frame.insert("fix".into(), Value::Object(fix));
    Ok(Value::Object(frame))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msgpack::{json_to_msgpack, msgpack_to_value};
    use serde_json::json;

    fn frame(fix: Value) -> Value {
        json!({"type":"location","channel":"tracking:d-1","driver_id":"d-1","fix":fix})
    }

    fn lean(frame: &Value, base: Option<&Value>) -> Value {
        msgpack_to_value(&encode(frame, base).unwrap()).unwrap()
    }

    #[test]
    fn coordinates_are_e7_integers_rounded() {
        assert_eq!(to_e7(52.520_008_4), 525_200_084);
        assert_eq!(to_e7(52.520_008_45), 525_200_085, "rounded, not truncated");
        assert_eq!(to_e7(-13.404_954_26), -134_049_543);
        assert_eq!(to_e7(-13.404_954_24), -134_049_542);
        assert_eq!(to_e7(180.0), 1_800_000_000);
        assert_eq!(to_e7(-180.0), -1_800_000_000);
        // Seven decimals come back exactly.
        for deg in [
            52.520_008_4,
            -13.404_954_2,
            0.000_000_1,
            89.999_999_9,
            6.641_664_8,
        ] {
            assert_eq!(from_e7(to_e7(deg)), deg);
        }
        // More are rounded to within half a unit.
        let deg = 52.097_312_39;
        assert!((from_e7(to_e7(deg)) - deg).abs() <= 0.5e-7);
        let v = lean(
            &frame(json!({"seq":1,"ts":5,"lat":52.52000845,"lon":-13.40495426})),
            None,
        );
        assert_eq!(v["fix"]["lat_e7"], 525_200_085);
        assert_eq!(v["fix"]["lon_e7"], -134_049_543);
        assert!(v["fix"].get("lat").is_none() && v["fix"].get("lon").is_none());
    }

    #[test]
    fn whole_floats_are_written_as_integers() {
        let f = frame(
            json!({"seq":1,"ts":5,"lat":1.5,"lon":2.5,"speed_mps":8.0,"accuracy_m":4.5,"altitude_m":-3.0,"battery":1.0}),
        );
        let bytes = encode(&f, None).unwrap();
        let v = msgpack_to_value(&bytes).unwrap();
        assert!(v["fix"]["speed_mps"].is_u64(), "{v}");
        assert_eq!(v["fix"]["speed_mps"], 8);
        assert_eq!(v["fix"]["altitude_m"], -3);
        assert_eq!(v["fix"]["battery"], 1);
        assert!(v["fix"]["accuracy_m"].is_f64());
        // A map whose first key is `type`, as in every frame.
        assert_eq!(&bytes[1..6], b"\xa4type");
        // 8 as a positive fixint: one byte, where a float64 takes nine.
        let full = json_to_msgpack(&f.to_string()).unwrap();
        assert!(
            bytes.len() + 3 * 8 <= full.len(),
            "{} vs {}",
            bytes.len(),
            full.len()
        );
        // And read back as the same numbers.
        let back = expand(v, None).unwrap();
        let want: crate::Fix = serde_json::from_value(f["fix"].clone()).unwrap();
        let got: crate::Fix = serde_json::from_value(back["fix"].clone()).unwrap();
        assert_eq!(got, want);
    }

    #[test]
    fn a_delta_omits_equal_fields_keeps_changed_ones_and_nils_removed_ones() {
        let a = frame(
            json!({"seq":10,"ts":1000,"lat":52.5,"lon":13.4,"accuracy_m":4.5,"speed_mps":3.25,"heading_deg":90.0,"battery":0.8}),
        );
        let b = frame(
            json!({"seq":11,"ts":2000,"lat":52.5,"lon":13.4000001,"accuracy_m":4.5,"speed_mps":3.5,"battery":0.8,"charging":true}),
        );
        let d = lean(&b, Some(&a));
        assert_eq!(
            d,
            json!({"type":"location","channel":"tracking:d-1","base":10,"fix":{
                "seq":11,"ts":2000,"lat_e7":525_000_000,"lon_e7":134_000_001,
                "speed_mps":3.5,"charging":true,"heading_deg":null}})
        );
        // Read back against the base: the full frame.
        let back = expand(d.clone(), Some(&a)).unwrap();
        assert_eq!(back, b);
        // The full form of the same frame carries everything.
        let full = lean(&b, None);
        assert!(full.get("base").is_none());
        assert_eq!(full["driver_id"], "d-1");
        assert_eq!(full["fix"]["accuracy_m"], 4.5);
        assert_eq!(expand(full, None).unwrap(), b);
        assert!(encode(&b, Some(&a)).unwrap().len() < encode(&b, None).unwrap().len());
    }

    #[test]
    fn a_base_that_does_not_come_before_gives_a_full_frame() {
        let a = frame(json!({"seq":10,"ts":1,"lat":1.0,"lon":2.0}));
        let older = frame(json!({"seq":3,"ts":2,"lat":1.0,"lon":2.0}));
        let v = lean(&older, Some(&a));
        assert!(v.get("base").is_none());
        assert_eq!(v["driver_id"], "d-1");
        assert_eq!(lean(&a, Some(&a)).get("base"), None, "same seq: full");
    }

    #[test]
    fn an_unknown_base_is_refused() {
        let a = frame(json!({"seq":10,"ts":1,"lat":1.0,"lon":2.0}));
        let b = frame(json!({"seq":11,"ts":2,"lat":1.0,"lon":2.0}));
        let c = frame(json!({"seq":12,"ts":3,"lat":1.0,"lon":2.0}));
        let d = lean(&c, Some(&b));
        assert!(matches!(
            expand(d.clone(), Some(&a)),
            Err(LeanError::UnknownBase {
                base: 11,
                held: Some(10),
                ..
            })
        ));
        assert!(matches!(
            expand(d.clone(), None),
            Err(LeanError::UnknownBase { held: None, .. })
        ));
        assert_eq!(expand(d, Some(&b)).unwrap(), c);
    }

    /// The example in docs/API-EXTENSIONS.md.
    #[test]
    fn the_documented_example() {
        let a = json!({"type":"location","channel":"tracking:d-1","driver_id":"d-1","fix":{"seq":41,"ts":1_796_645_371_772_i64,"lat":52.0973124,"lon":6.6416648,"accuracy_m":4.5,"speed_mps":8.0,"heading_deg":271.5,"battery":0.5}});
        let b = json!({"type":"location","channel":"tracking:d-1","driver_id":"d-1","fix":{"seq":42,"ts":1_796_645_372_772_i64,"lat":52.0973901,"lon":6.6417002,"accuracy_m":4.5,"speed_mps":7.25,"battery":0.5}});
        assert_eq!(
            lean(&a, None),
            json!({"type":"location","channel":"tracking:d-1","driver_id":"d-1","fix":{"seq":41,"ts":1_796_645_371_772_i64,"lat_e7":520_973_124,"lon_e7":66_416_648,"accuracy_m":4.5,"speed_mps":8,"heading_deg":271.5,"battery":0.5}})
        );
        assert_eq!(
            lean(&b, Some(&a)),
            json!({"type":"location","channel":"tracking:d-1","base":41,"fix":{"seq":42,"ts":1_796_645_372_772_i64,"lat_e7":520_973_901,"lon_e7":66_417_002,"speed_mps":7.25,"heading_deg":null}})
        );
        // The sizes bench/frame_sizes.py checks its encoder against.
        assert_eq!(encode(&a, None).unwrap().len(), 165);
        assert_eq!(encode(&b, Some(&a)).unwrap().len(), 120);
        // Read back: the same fixes (8 reads as the float 8.0).
        let fix = |v: &Value| serde_json::from_value::<crate::Fix>(v["fix"].clone()).unwrap();
        let full = expand(lean(&a, None), None).unwrap();
        assert_eq!(fix(&full), fix(&a));
        assert_eq!(full["driver_id"], "d-1");
        let next = expand(lean(&b, Some(&a)), Some(&full)).unwrap();
        assert_eq!(fix(&next), fix(&b));
        assert_eq!(next["driver_id"], "d-1");
    }

    #[test]
    fn other_frames_are_not_lean() {
        assert!(encode(&json!({"type":"pong","id":1}), None).is_err());
        assert!(encode(&json!({"type":"location","fix":{"seq":1}}), None).is_err());
        assert!(expand(json!({"type":"location","fix":{"seq":1,"lat":1.0}}), None).is_err());
        // Degrees instead of e7, or one coordinate missing: not lean.
        let f = json!({"type":"location","fix":{"seq":1,"lat":1.0,"lon":2.0}});
        assert!(expand(f, None).is_err());
        let f = json!({"type":"location","fix":{"seq":1,"lat_e7":1}});
        assert!(expand(f, None).is_err());
    }
}
