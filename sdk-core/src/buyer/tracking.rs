//! Tracking state: which drivers the app watches and the newest fix seen
//! for each, so a resubscribe asks only for what is newer (`after`) and a
//! replayed or duplicated fix never reaches the app twice.

use std::collections::HashMap;

use waypost_protocol::{Channel, ClientFrame, Fix};

use super::types::LocationUpdate;

/// Drivers one client may track at once.
pub const MAX_TRACKED: usize = 64;

#[derive(Debug, Default)]
pub struct Tracking {
    drivers: HashMap<String, Option<Fix>>,
}

impl Tracking {
    /// Starts tracking; false when at the limit (already tracked is fine).
    pub fn add(&mut self, driver_id: &str) -> bool {
        if self.drivers.contains_key(driver_id) {
            return true;
        }
        if self.drivers.len() >= MAX_TRACKED {
            return false;
        }
        self.drivers.insert(driver_id.to_owned(), None);
        true
    }

    /// The tracked drivers.
    pub fn drivers(&self) -> impl Iterator<Item = &String> {
        self.drivers.keys()
    }

    pub fn remove(&mut self, driver_id: &str) -> bool {
        self.drivers.remove(driver_id).is_some()
    }

    pub fn channel(driver_id: &str) -> String {
        Channel::tracking(driver_id).to_string()
    }

    /// The subscribe frame for `driver_id`, resuming after the newest fix.
    pub fn subscribe_frame(&self, driver_id: &str) -> ClientFrame {
        ClientFrame::Subscribe {
            channel: Self::channel(driver_id),
            after: self
                .drivers
                .get(driver_id)
                .and_then(|f| f.as_ref().map(|f| f.seq)),
        }
    }

    /// Subscribe frames for every tracked driver.
    pub fn resubscribe(&self, out: &mut Vec<ClientFrame>) {
        for d in self.drivers.keys() {
            out.push(self.subscribe_frame(d));
        }
    }

    /// Takes a fix from the server; returns the update for the app when it
    /// is for a tracked driver and newer than the last one reported
    /// (higher seq, or a later timestamp from a driver's other device).
    pub fn on_location(&mut self, driver_id: &str, fix: Fix) -> Option<LocationUpdate> {
        let last = self.drivers.get_mut(driver_id)?;
        let newer = last
            .as_ref()
            .is_none_or(|l| fix.seq > l.seq || fix.ts > l.ts);
        if !newer {
            return None;
        }
        let update = LocationUpdate::from_fix(driver_id, &fix);
        *last = Some(fix);
        Some(update)
    }

    pub fn is_tracked(&self, driver_id: &str) -> bool {
        self.drivers.contains_key(driver_id)
    }

    pub fn latest(&self, driver_id: &str) -> Option<LocationUpdate> {
        self.drivers
            .get(driver_id)
            .and_then(|f| f.as_ref().map(|f| LocationUpdate::from_fix(driver_id, f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resumes_after_last_seq_and_drops_stale() {
        let mut t = Tracking::default();
        assert!(t.add("d1"));
        assert_eq!(
            t.subscribe_frame("d1"),
            ClientFrame::Subscribe {
                channel: "tracking:d1".into(),
                after: None
            }
        );
        assert!(t.on_location("d1", Fix::new(5, 100, 1.0, 2.0)).is_some());
        assert!(
            t.on_location("d1", Fix::new(5, 100, 1.0, 2.0)).is_none(),
            "duplicate"
        );
        assert!(
            t.on_location("d1", Fix::new(4, 90, 1.0, 2.0)).is_none(),
            "stale"
        );
        assert!(
            t.on_location("other", Fix::new(9, 100, 1.0, 2.0)).is_none(),
            "untracked"
        );
        assert_eq!(
            t.subscribe_frame("d1"),
            ClientFrame::Subscribe {
                channel: "tracking:d1".into(),
                after: Some(5)
            }
        );
        assert_eq!(t.latest("d1").map(|l| l.seq), Some(5));
        for i in 0..MAX_TRACKED {
            t.add(&format!("x{i}"));
        }
        assert!(!t.add("one-too-many"));
    }
}
