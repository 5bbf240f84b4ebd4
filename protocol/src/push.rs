//! Push registration bodies and the data every push carries (issue 19).
//!
//! A push says where to resume, not what happened: `channel`, the highest
//! `seq` it covers (chat seq, order timeline seq or notification seq) and
//! how many items it collapses. The woken app reads what it misses after
//! its own last seq over the usual history endpoints.

use serde::{Deserialize, Serialize};

/// `POST /v1/devices`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRegistration {
    pub device_id: String,
    /// `"apns"` or `"fcm"`.
    pub platform: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Channels this device wants no push for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub muted: Vec<String>,
}

/// The reply of `POST /v1/devices`: the channels pushes will come for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRegistered {
    pub device_id: String,
    pub channels: Vec<String>,
}

/// What a push is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    /// Chat messages (`chat:{room}`, seq = message seq).
    Message,
    /// Order timeline entries (`order:{id}`, seq = timeline seq).
    Order,
    /// Vendor notifications (`vendor:{id}`, seq = notification seq).
    Notification,
    /// `waypost push-test`.
    Test,
}

/// The data of a push (APNs: the `waypost` key beside `aps`; FCM: the
/// `data` map, every value a string, see [`PushData::from_fcm_data`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushData {
    pub kind: PushKind,
    pub channel: String,
    /// Highest seq this push covers.
    pub seq: u64,
    /// Items collapsed into this push (at least 1).
    pub count: u32,
    /// A short preview (chat body, order status, event name) when allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
}

impl PushData {
    /// Reads a push payload as an app receives it: an APNs `userInfo`
    /// (`{"aps":…,"waypost":{…}}`), the FCM `data` map (string values), or
    /// the bare object.
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        let inner = v.get("waypost").cloned().unwrap_or(v);
        if let Some(map) = inner.as_object() {
            if map.get("seq").is_some_and(|s| s.is_string()) {
                return Self::from_fcm_data(map);
            }
        }
        serde_json::from_value(inner)
    }

    /// The FCM `data` map: values are strings.
    pub fn from_fcm_data(
        map: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Self, serde_json::Error> {
        let mut out = serde_json::Map::new();
        for (k, v) in map {
            let v = match (k.as_str(), v.as_str()) {
                ("seq" | "count", Some(s)) => s
                    .parse::<u64>()
                    .map(serde_json::Value::from)
                    .map_err(serde::de::Error::custom)?,
                _ => v.clone(),
            };
            out.insert(k.clone(), v);
        }
        serde_json::from_value(serde_json::Value::Object(out))
    }

    /// The FCM `data` map (every value a string).
    pub fn to_fcm_data(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        let kind = serde_json::to_value(self.kind).unwrap_or_default();
        m.insert("kind".into(), kind);
        m.insert("channel".into(), self.channel.clone().into());
        m.insert("seq".into(), self.seq.to_string().into());
        m.insert("count".into(), self.count.to_string().into());
        if let Some(p) = &self.preview {
            m.insert("preview".into(), p.clone().into());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apns_fcm_and_bare_forms() {
        let d = PushData {
            kind: PushKind::Message,
            channel: "chat:r1".into(),
            seq: 7,
            count: 3,
            preview: Some("hi".into()),
        };
        let bare = serde_json::to_string(&d).unwrap();
        assert_eq!(PushData::parse(&bare).unwrap(), d);
        let apns = format!(r#"{{"aps":{{"alert":{{"loc-key":"X"}}}},"waypost":{bare}}}"#);
        assert_eq!(PushData::parse(&apns).unwrap(), d);
        let fcm = serde_json::Value::Object(d.to_fcm_data()).to_string();
        assert_eq!(PushData::parse(&fcm).unwrap(), d);
        assert!(PushData::parse(r#"{"seq":"x","kind":"message"}"#).is_err());
    }
}
