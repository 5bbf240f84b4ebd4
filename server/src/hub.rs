//! The local fan-out hub: which connections of this process listen on which
//! channel, and delivery of one serialized frame to all of them.
//!
//! A frame is serialized once and shared: every subscriber's mailbox gets a
//! clone of the same reference-counted bytes. Mailboxes are bounded; a
//! connection whose mailbox is full is told to close with 4101 instead of
//! letting memory grow. No lock is held across an await: `dispatch` only
//! pushes under short locks.
//!
//! Each connection has one [`Mailbox`]: its queued frames, its kill code and
//! a tick flag behind one small mutex, with one `Notify` to wake its task.
//! That is the connection's whole wake-up surface, so a WebSocket task waits
//! on two things (its mailbox and its socket) instead of a channel, a kill
//! switch, the shutdown token and two timers: the process-wide ticker
//! ([`Hub::tick_slot`]) replaces per-connection ping and presence timers,
//! and [`Hub::kill_all`] replaces per-connection shutdown futures. This
//! keeps an idle connection small (BENCHMARKS.md, idle connections).

use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use tokio::sync::Notify;
use waypost_protocol::{close_code, Channel, ChannelKind};

use crate::frame::{About, Frame};
use crate::metrics::Metrics;

/// Identifies one client connection within this process.
pub type ConnId = u64;

/// A frame queued for connections: one allocation per dispatch, shared by
/// every subscriber's mailbox (a queue slot is one pointer).
#[derive(Debug, Clone)]
pub struct Outbound(Arc<OutboundFrame>);

/// What an [`Outbound`] carries: the frame (text and meta), the kind of
/// the channel it was dispatched on (the metric label) and its MessagePack
/// form, built by the first `waypost.v1.msgpack` subscriber that writes it
/// and shared by the others (never built when every subscriber speaks
/// JSON).
///
/// A location frame also has its `waypost.v1.lean` forms, built on demand
/// and shared the same way: the full lean frame (with the parsed frame the
/// deltas are computed from), and the delta against one base frame, filled
/// by the first lean subscriber that writes it and reused by every other
/// whose previous location frame was the same (the common case: every
/// watcher got the same previous frame).
#[derive(Debug)]
pub struct OutboundFrame {
    pub frame: Frame,
    pub kind: ChannelKind,
    binary: OnceLock<Option<Bytes>>,
    lean: OnceLock<Option<Box<Lean>>>,
    /// The delta and the base it was computed against. The `Weak` keeps the
    /// base's allocation (not its contents) until this frame goes, so its
    /// address cannot be reused by another frame while it is compared.
    delta: OnceLock<(Weak<OutboundFrame>, Bytes)>,
}

/// A location frame's lean form.
#[derive(Debug)]
pub struct Lean {
    /// The channel the frame is on (the key of the base a lean connection
    /// keeps per subscription).
    pub channel: Channel,
    /// The frame's JSON value, what deltas are computed from.
    value: serde_json::Value,
    /// The full lean frame (no base).
    full: Bytes,
}

impl Outbound {
    pub fn new(frame: Frame, kind: ChannelKind) -> Self {
        Self(Arc::new(OutboundFrame {
            frame,
            kind,
            binary: OnceLock::new(),
            lean: OnceLock::new(),
            delta: OnceLock::new(),
        }))
    }

    /// Whether `text` is this frame's own shared text (not an entry a gap
    /// fill fetched for its delivery): only then are its shared binary and
    /// lean forms the right bytes to write.
    pub fn is_own_text(&self, text: &str) -> bool {
        let own = self.0.frame.text.as_str();
        text.as_ptr() == own.as_ptr() && text.len() == own.len()
    }

    /// Whether the frame is a `location` frame (of a driver's tracking
    /// channel or of an order's).
    pub fn is_location(&self) -> bool {
        matches!(
            self.0.frame.meta.about,
            About::Location { .. } | About::OrderLocation { .. }
        )
    }

    /// The lean form of a location frame, parsed and encoded once per
    /// dispatch; `None` for other frames.
    pub fn lean(&self) -> Option<&Lean> {
        self.0
            .lean
            .get_or_init(|| {
                if !self.is_location() {
                    return None;
                }
                let value: serde_json::Value = serde_json::from_str(&self.0.frame.text).ok()?;
                let channel = Channel::from_name(value.get("channel")?.as_str()?)?;
                let full = waypost_protocol::lean::encode(&value, None).ok()?;
                Some(Box::new(Lean {
                    channel,
                    value,
                    full: Bytes::from(full),
                }))
            })
            .as_deref()
    }

    /// What a lean subscriber writes for this location frame when the
    /// previous location frame it wrote on the channel was `base`: the
    /// delta against `base` (computed once per base and shared), or the
    /// full lean frame without one. `None` for other frames.
    pub fn lean_for(&self, base: Option<&Outbound>) -> Option<Bytes> {
        let lean = self.lean()?;
        let Some((base, base_lean)) = base.and_then(|b| Some((b, b.lean()?))) else {
            return Some(lean.full.clone());
        };
        if let Some((of, delta)) = self.0.delta.get() {
            if std::ptr::eq(of.as_ptr(), Arc::as_ptr(&base.0)) {
                return Some(delta.clone());
            }
        }
        let delta = match waypost_protocol::lean::encode(&lean.value, Some(&base_lean.value)) {
            Ok(delta) => Bytes::from(delta),
            Err(_) => return Some(lean.full.clone()),
        };
        // Another subscriber may have filled it meanwhile (maybe against
        // another base): then this one's delta is just not shared.
        let _ = self.0.delta.set((Arc::downgrade(&base.0), delta.clone()));
        Some(delta)
    }

    /// The frame as MessagePack, transcoded from its text once per
    /// dispatch; `None` when the text is not JSON (nothing a WebSocket
    /// subscribes to: those are written as text).
    pub fn binary(&self) -> Option<&Bytes> {
        self.0
            .binary
            .get_or_init(|| {
                waypost_protocol::msgpack::json_to_msgpack(&self.0.frame.text)
                    .ok()
                    .map(Bytes::from)
            })
            .as_ref()
    }
}

impl std::ops::Deref for Outbound {
    type Target = Frame;

    fn deref(&self) -> &Frame {
        &self.0.frame
    }
}

impl Outbound {
    /// The kind of the channel it came on.
    pub fn kind(&self) -> ChannelKind {
        self.0.kind
    }
}

/// What wakes a connection's task, most urgent first.
#[derive(Debug)]
pub enum Event {
    /// Close with this code (4101 too slow, 4102 overloaded, 4100 shutdown).
    /// Once killed, a mailbox reports this forever.
    Killed(u16),
    /// A frame to write.
    Frame(Outbound),
    /// The process-wide ticker: time for pings and presence heartbeats.
    Tick,
}

#[derive(Debug)]
struct MailboxState {
    frames: VecDeque<Outbound>,
    capacity: usize,
    /// 0 while alive; the first kill code wins.
    kill: u16,
    tick: bool,
}

/// One connection's bounded queue, kill code and tick flag.
#[derive(Debug)]
struct Mailbox {
    state: Mutex<MailboxState>,
    notify: Notify,
    /// The `exp` (Unix seconds) of the token the connection runs on, as
    /// the expiry wheel knows it (0: not watched, or ended). Kept here
    /// rather than in an `Arc` of its own: one allocation less per
    /// connection.
    token_exp: AtomicU64,
}

/// What [`ConnHandle::offer`] did with a frame.
enum Offer {
    Queued,
    Full,
    Dead,
}

/// The hub's handle on one connection (cheap to clone).
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    mailbox: Arc<Mailbox>,
}

impl ConnHandle {
    /// Asks the connection to close with `code`; the first code wins.
    pub fn kill(&self, code: u16) {
        let mut s = self.mailbox.state.lock();
        if s.kill == 0 {
            s.kill = code;
            // Frames queued for a connection that is closing are dropped.
            s.frames = VecDeque::new();
            drop(s);
            self.mailbox.notify.notify_one();
        }
    }

    /// Queues `frame` for this connection only (e.g. a session frame);
    /// false when it is closing or its queue is full.
    pub fn send(&self, frame: &Outbound) -> bool {
        matches!(self.offer(frame), Offer::Queued)
    }

    fn offer(&self, frame: &Outbound) -> Offer {
        let mut s = self.mailbox.state.lock();
        if s.kill != 0 {
            return Offer::Dead;
        }
        if s.frames.len() >= s.capacity {
            return Offer::Full;
        }
        let was_empty = s.frames.is_empty();
        s.frames.push_back(frame.clone());
        drop(s);
        // The task drains the whole queue before it waits again, so only
        // the first frame of a backlog needs to wake it.
        if was_empty {
            self.mailbox.notify.notify_one();
        }
        Offer::Queued
    }

    /// The token `exp` the expiry wheel holds for this connection.
    pub(crate) fn token_exp(&self) -> u64 {
        self.mailbox.token_exp.load(Ordering::Relaxed)
    }

    pub(crate) fn set_token_exp(&self, exp: u64) {
        self.mailbox.token_exp.store(exp, Ordering::Relaxed);
    }

    fn tick(&self) {
        let mut s = self.mailbox.state.lock();
        if !s.tick && s.kill == 0 {
            s.tick = true;
            drop(s);
            self.mailbox.notify.notify_one();
        }
    }
}

/// The connection task's end of its mailbox. Only one task waits on it.
#[derive(Debug)]
pub struct Receiver {
    mailbox: Arc<Mailbox>,
}

impl Receiver {
    /// Waits for the next event: a kill first, then queued frames in order,
    /// then a tick.
    pub async fn next(&self) -> Event {
        loop {
            if let Some(event) = self.poll_event() {
                return event;
            }
            // A notification sent between the check and this wait is kept
            // as a permit by `Notify`, so nothing is missed.
            self.mailbox.notify.notified().await;
        }
    }

    fn poll_event(&self) -> Option<Event> {
        let mut s = self.mailbox.state.lock();
        if s.kill != 0 {
            return Some(Event::Killed(s.kill));
        }
        if let Some(f) = s.frames.pop_front() {
            return Some(Event::Frame(f));
        }
        if std::mem::take(&mut s.tick) {
            return Some(Event::Tick);
        }
        None
    }

    /// The next queued frame, without waiting (None when killed).
    pub fn try_frame(&self) -> Option<Outbound> {
        let mut s = self.mailbox.state.lock();
        if s.kill != 0 {
            return None;
        }
        let f = s.frames.pop_front();
        if s.frames.is_empty() && s.frames.capacity() > s.capacity.min(64) {
            // A burst grew the queue: give the memory back once drained.
            s.frames = VecDeque::new();
        }
        f
    }

    /// Resolves with the kill code once the connection is killed.
    pub async fn killed(&self) -> u16 {
        loop {
            let code = self.mailbox.state.lock().kill;
            if code != 0 {
                return code;
            }
            self.mailbox.notify.notified().await;
        }
    }

    /// The next frame, skipping ticks; None once killed.
    pub async fn recv(&mut self) -> Option<Outbound> {
        loop {
            match self.next().await {
                Event::Frame(f) => return Some(f),
                Event::Killed(_) => return None,
                Event::Tick => {}
            }
        }
    }
}

/// Creates a connection's bounded mailbox and its handle.
pub fn connection(id: ConnId, queue: usize) -> (ConnHandle, Receiver) {
    let mailbox = Arc::new(Mailbox {
        state: Mutex::new(MailboxState {
            frames: VecDeque::new(),
            capacity: queue.max(1),
            kill: 0,
            tick: false,
        }),
        notify: Notify::new(),
        token_exp: AtomicU64::new(0),
    });
    (
        ConnHandle {
            id,
            mailbox: Arc::clone(&mailbox),
        },
        Receiver { mailbox },
    )
}

/// The ticker's slots: connection `id` is ticked with slot
/// `id % TICK_SLOTS`. Many fine slots keep what is due at any moment small
/// (1/1024 of the connections), so pings do not leave in bursts.
pub const TICK_SLOTS: usize = 1024;

/// Local subscribers by channel name, and the WebSocket connections of this
/// process by tick slot (for the ticker and shutdown).
pub struct Hub {
    channels: RwLock<HashMap<Channel, HashMap<ConnId, ConnHandle>>>,
    sockets: Box<[Mutex<HashMap<ConnId, ConnHandle>>]>,
    next_id: AtomicU64,
    metrics: Metrics,
}

impl Hub {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            channels: RwLock::new(HashMap::new()),
            sockets: (0..TICK_SLOTS).map(|_| Mutex::default()).collect(),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a WebSocket connection for ticks and [`Hub::kill_all`].
    pub fn register(&self, handle: &ConnHandle) {
        self.slot(handle.id)
            .lock()
            .insert(handle.id, handle.clone());
    }

    pub fn unregister(&self, id: ConnId) {
        self.slot(id).lock().remove(&id);
    }

    fn slot(&self, id: ConnId) -> &Mutex<HashMap<ConnId, ConnHandle>> {
        &self.sockets[(id % TICK_SLOTS as u64) as usize]
    }

    /// Ticks the registered connections of `slot` (of [`TICK_SLOTS`]; the
    /// ticker walks the slots evenly over one round). Returns how many.
    pub fn tick_slot(&self, slot: usize) -> usize {
        let due: Vec<ConnHandle> = self.sockets[slot % TICK_SLOTS]
            .lock()
            .values()
            .cloned()
            .collect();
        for h in &due {
            h.tick();
        }
        due.len()
    }

    /// Kills every registered connection with `code` (shutdown: 4100).
    pub fn kill_all(&self, code: u16) -> usize {
        let mut n = 0;
        for slot in &self.sockets {
            let all: Vec<ConnHandle> = slot.lock().values().cloned().collect();
            for h in &all {
                h.kill(code);
            }
            n += all.len();
        }
        n
    }

    /// Adds a subscriber; returns true when it is the channel's first local
    /// one. Adding the same connection twice is a no-op.
    pub fn add(&self, channel: &Channel, handle: ConnHandle) -> bool {
        let mut map = self.channels.write();
        let subs = map.entry(channel.clone()).or_default();
        let first = subs.is_empty();
        // The gauge counts what clients hold; the process's own listeners
        // (control channels) are not subscriptions of anyone.
        if subs.insert(handle.id, handle).is_none() && channel.kind != ChannelKind::Control {
            self.metrics.subscriptions.inc();
        }
        first
    }

    /// Removes a subscriber; returns true when the channel has no local
    /// subscriber left.
    pub fn remove(&self, channel: &Channel, id: ConnId) -> bool {
        let mut map = self.channels.write();
        let Some(subs) = map.get_mut(channel) else {
            return false;
        };
        if subs.remove(&id).is_some() && channel.kind != ChannelKind::Control {
            self.metrics.subscriptions.dec();
        }
        if subs.is_empty() {
            map.remove(channel);
            true
        } else {
            false
        }
    }

    /// Local subscribers of `channel`.
    pub fn local_count(&self, channel: &Channel) -> usize {
        self.channels.read().get(channel).map_or(0, HashMap::len)
    }

    /// The client channels each of `ids` is subscribed to here, at most
    /// `limit` per connection. Scans every channel under the read lock: for
    /// rare operator lookups, not for hot paths.
    pub fn channels_of(&self, ids: &[ConnId], limit: usize) -> HashMap<ConnId, Vec<Channel>> {
        let mut out: HashMap<ConnId, Vec<Channel>> = HashMap::new();
        if ids.is_empty() {
            return out;
        }
        let map = self.channels.read();
        for (channel, subs) in map.iter() {
            if channel.kind == ChannelKind::Control {
                continue;
            }
            for id in ids {
                if subs.contains_key(id) {
                    let list = out.entry(*id).or_default();
                    if list.len() < limit {
                        list.push(channel.clone());
                    }
                }
            }
        }
        out
    }

    /// Every channel with at least one local subscriber.
    pub fn channels(&self) -> Vec<Channel> {
        self.channels.read().keys().cloned().collect()
    }

    /// Queues `frame` for every local subscriber of `channel`; returns how
    /// many queues took it. Full queues get their connection closed (4101).
    pub fn dispatch(&self, channel: &Channel, frame: Frame) -> usize {
        let map = self.channels.read();
        let Some(subs) = map.get(channel) else {
            return 0;
        };
        let mut delivered = 0;
        let frame = Outbound::new(frame, channel.kind);
        for handle in subs.values() {
            match handle.offer(&frame) {
                Offer::Queued => delivered += 1,
                Offer::Full => {
                    self.metrics.slow_consumers.inc();
                    handle.kill(close_code::TOO_SLOW);
                }
                Offer::Dead => {}
            }
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_messagepack_form_is_built_once_and_shared() {
        let fix: waypost_protocol::Fix =
            serde_json::from_str(r#"{"seq":7,"ts":1,"lat":52.5,"lon":13.4,"speed_mps":3.25}"#)
                .unwrap();
        let out = Outbound::new(Frame::location("d-1", &fix, 1), ChannelKind::Tracking);
        let copy = out.clone();
        let first = out.binary().unwrap().clone();
        let second = copy.binary().unwrap();
        assert_eq!(
            first.as_ptr(),
            second.as_ptr(),
            "one transcoding per dispatch"
        );
        let back = waypost_protocol::msgpack::msgpack_to_value(&first).unwrap();
        let json: serde_json::Value = serde_json::from_str(&out.text).unwrap();
        assert_eq!(back, json);
        assert!(first.len() < out.text.len());
        // Not JSON (an SSE notification): no binary form, written as text.
        let sse = Frame::notification(1, "id: 1\nevent: x\ndata: {}\n\n".into(), 0);
        assert!(Outbound::new(sse, ChannelKind::Vendor).binary().is_none());
    }

    #[test]
    fn lean_forms_are_built_once_per_frame_and_base_and_shared() {
        let fix = |seq: u64, speed: f64| -> waypost_protocol::Fix {
            serde_json::from_value(serde_json::json!({
                "seq": seq, "ts": 1_000 + seq, "lat": 52.5, "lon": 13.4, "speed_mps": speed,
                "accuracy_m": 4.5
            }))
            .unwrap()
        };
        let out = |seq, speed| {
            Outbound::new(
                Frame::location("d-1", &fix(seq, speed), 1),
                ChannelKind::Tracking,
            )
        };
        let (a, b, c) = (out(1, 3.0), out(2, 3.0), out(3, 4.0));
        // Full: shared by every subscriber without a base.
        let full = b.lean_for(None).unwrap();
        assert_eq!(full.as_ptr(), b.clone().lean_for(None).unwrap().as_ptr());
        assert_eq!(b.lean().unwrap().channel, Channel::tracking("d-1"));
        let v = waypost_protocol::msgpack::msgpack_to_value(&full).unwrap();
        assert!(v.get("base").is_none());
        assert_eq!(v["fix"]["lat_e7"], 525_000_000);
        // Against `a`: one delta, shared by every subscriber whose base is `a`.
        let d1 = b.lean_for(Some(&a)).unwrap();
        let d2 = b.clone().lean_for(Some(&a.clone())).unwrap();
        assert_eq!(d1.as_ptr(), d2.as_ptr(), "one delta per (frame, base)");
        assert!(d1.len() < full.len());
        let v = waypost_protocol::msgpack::msgpack_to_value(&d1).unwrap();
        assert_eq!(v["base"], 1);
        assert!(v.get("driver_id").is_none() && v["fix"].get("speed_mps").is_none());
        // Another base: its own delta, correct, not the shared one.
        let other = out(1, 9.0);
        let d3 = b.lean_for(Some(&other)).unwrap();
        let v = waypost_protocol::msgpack::msgpack_to_value(&d3).unwrap();
        assert_eq!(v["fix"]["speed_mps"], 3);
        assert_eq!(b.lean_for(Some(&a)).unwrap().as_ptr(), d1.as_ptr());
        // A base that does not come before: full.
        let v =
            waypost_protocol::msgpack::msgpack_to_value(&a.lean_for(Some(&c)).unwrap()).unwrap();
        assert!(v.get("base").is_none());
        // Not a location frame: no lean form.
        let chat = Outbound::new(Frame::from("{}"), ChannelKind::Chat);
        assert!(!chat.is_location() && chat.lean_for(Some(&a)).is_none());
    }

    #[test]
    fn channels_of_lists_client_channels_per_connection_bounded() {
        let hub = Hub::new(Metrics::new());
        let (a, _ra) = connection(1, 4);
        let (b, _rb) = connection(2, 4);
        for i in 0..5 {
            hub.add(&Channel::tracking(format!("d-{i}")), a.clone());
        }
        hub.add(&Channel::control("admin"), a.clone());
        hub.add(&Channel::tracking("d-0".to_owned()), b.clone());
        let of = hub.channels_of(&[1, 2, 3], 3);
        assert_eq!(of.get(&1).map(Vec::len), Some(3), "bounded per connection");
        assert!(of[&1].iter().all(|c| c.kind != ChannelKind::Control));
        assert_eq!(of.get(&2), Some(&vec![Channel::tracking("d-0".to_owned())]));
        assert!(!of.contains_key(&3));
        assert!(hub.channels_of(&[], 3).is_empty());
    }

    #[test]
    fn subscriptions_gauge_counts_clients_not_control_listeners() {
        let hub = Hub::new(Metrics::new());
        let (a, _ra) = connection(1, 4);
        let (ctl, _rc) = connection(2, 4);
        let d = Channel::tracking("d");
        let control = Channel::control("admin");
        hub.add(&d, a);
        hub.add(&control, ctl);
        assert_eq!(hub.metrics.subscriptions.get(), 1);
        hub.remove(&control, 2);
        assert_eq!(hub.metrics.subscriptions.get(), 1);
        hub.remove(&d, 1);
        assert_eq!(hub.metrics.subscriptions.get(), 0);
    }

    #[tokio::test]
    async fn dispatch_shares_one_frame_and_counts() {
        let hub = Hub::new(Metrics::new());
        let (a, mut ra) = connection(1, 4);
        let (b, mut rb) = connection(2, 4);
        let d = Channel::tracking("d");
        assert!(hub.add(&d, a));
        assert!(!hub.add(&d, b));
        assert_eq!(hub.local_count(&d), 2);
        let frame = Frame::from("{}");
        assert_eq!(hub.dispatch(&d, frame.clone()), 2);
        assert_eq!(ra.recv().await.unwrap().text, frame.text);
        assert_eq!(rb.recv().await.unwrap().text, frame.text);
        assert_eq!(hub.dispatch(&Channel::tracking("other"), frame), 0);
        assert!(!hub.remove(&d, 1));
        assert!(hub.remove(&d, 2));
        assert!(hub.channels().is_empty());
    }

    #[tokio::test]
    async fn full_queue_kills_with_4101() {
        let hub = Hub::new(Metrics::new());
        let (a, ra) = connection(1, 1);
        let c = Channel::chat("c");
        hub.add(&c, a);
        assert_eq!(hub.dispatch(&c, Frame::from("x")), 1);
        assert_eq!(hub.dispatch(&c, Frame::from("x")), 0);
        assert_eq!(ra.killed().await, close_code::TOO_SLOW);
        assert!(matches!(
            ra.next().await,
            Event::Killed(close_code::TOO_SLOW)
        ));
        // Dead: neither queued nor counted as slow again.
        assert_eq!(hub.dispatch(&c, Frame::from("x")), 0);
        assert!(ra.try_frame().is_none());
    }

    #[tokio::test]
    async fn events_come_kill_first_then_frames_then_tick() {
        let hub = Hub::new(Metrics::new());
        let (a, ra) = connection(7, 8);
        hub.register(&a);
        let c = Channel::chat("c");
        hub.add(&c, a.clone());
        assert_eq!(hub.tick_slot(0), 0, "id 7 is in slot 7");
        assert_eq!(hub.tick_slot(7 + TICK_SLOTS), 1);
        hub.dispatch(&c, Frame::from("1"));
        hub.dispatch(&c, Frame::from("2"));
        match ra.next().await {
            Event::Frame(f) => assert_eq!(f.text.as_str(), "1"),
            other => panic!("expected a frame, got {other:?}"),
        }
        assert_eq!(ra.try_frame().map(|f| f.text.to_string()), Some("2".into()));
        assert!(matches!(ra.next().await, Event::Tick));
        // Wakes a waiting task.
        let waiter = tokio::spawn(async move { ra.next().await });
        tokio::task::yield_now().await;
        assert_eq!(hub.kill_all(close_code::SHUTTING_DOWN), 1);
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(got, Event::Killed(close_code::SHUTTING_DOWN)));
        hub.unregister(7);
        assert_eq!(hub.kill_all(close_code::SHUTTING_DOWN), 0);
    }

    /// No burst: with 10,000 connections no slot ticks more than
    /// ceil(10,000 / TICK_SLOTS) of them, and one pass over the slots ticks
    /// each exactly once.
    #[test]
    fn ticks_are_spread_over_fine_slots() {
        let hub = Hub::new(Metrics::new());
        let n = 10_000;
        let mut receivers = Vec::new();
        for _ in 0..n {
            let (h, r) = connection(hub.next_conn_id(), 1);
            hub.register(&h);
            receivers.push(r);
        }
        let per_slot: Vec<usize> = (0..TICK_SLOTS).map(|s| hub.tick_slot(s)).collect();
        assert_eq!(per_slot.iter().sum::<usize>(), n);
        assert!(*per_slot.iter().max().unwrap() <= n.div_ceil(TICK_SLOTS));
        assert!(receivers.iter().all(|r| r.mailbox.state.lock().tick));
    }
}
