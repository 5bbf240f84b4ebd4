//! Unit tests of the whole buyer client against an in-process fake server,
//! in simulated time (`tokio::time::pause`): each connection attempt is
//! handed to the test, which plays the server (accept, refuse, answer,
//! close with a code, go silent) deterministically.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use waypost_protocol::{ClientFrame, Fix, MessageKind, ReceiptKind, ServerFrame};

use super::*;
use crate::backoff::SeededRandom;
use crate::clock::{Clock, Sleep};
use crate::env::{ManualEnvironment, NetworkType};
use crate::error::WaypostError;
use crate::tokens::TokenProvider;

/// Simulated time: tokio's paused clock, so sleeps auto-advance when every
/// task is idle.
struct TokioClock {
    origin: tokio::time::Instant,
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        1_700_000_000_000 + self.monotonic_ms() as i64
    }
    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }
    fn sleep(&self, d: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(d))
    }
}

/// What the fake server does with the next connection attempt.
enum Attempt {
    Refuse,
    Http(u16),
    Accept(mpsc::Sender<ServerSide>),
}

/// The server side of one accepted connection.
struct ServerSide {
    url: String,
    from_client: mpsc::UnboundedReceiver<String>,
    to_client: mpsc::UnboundedSender<Result<WsEvent, TransportError>>,
    /// `(room, seq)` of the `delivered` receipts the client sent, which
    /// `next` sets aside (they follow every stored batch).
    delivered: Vec<(String, u64)>,
}

impl ServerSide {
    fn send(&self, f: &ServerFrame) {
        let _ = self.to_client.send(Ok(WsEvent::Text(f.to_json())));
    }
    fn close(&self, code: u16) {
        let _ = self.to_client.send(Ok(WsEvent::Closed {
            code: Some(code),
            reason: format!("test {code}"),
        }));
    }
    /// Next client frame, answering pings on the way (unless told not to).
    async fn next(&mut self) -> Option<ClientFrame> {
        loop {
            let text = self.from_client.recv().await?;
            let f: ClientFrame = serde_json::from_str(&text).ok()?;
            if let ClientFrame::Ping { id } = &f {
                self.send(&ServerFrame::Pong { id: id.clone() });
                continue;
            }
            if let ClientFrame::Receipt {
                room,
                seq,
                kind: ReceiptKind::Delivered,
            } = &f
            {
                self.delivered.push((room.clone(), *seq));
                continue;
            }
            return Some(f);
        }
    }
}

struct FakeConnector {
    plan: Mutex<VecDeque<Attempt>>,
    attempts: Mutex<Vec<(u64, String)>>,
    clock: Arc<TokioClock>,
}

#[async_trait]
impl WsConnector for FakeConnector {
    async fn connect(&self, url: &str) -> Result<Box<dyn WsTransport>, TransportError> {
        self.attempts
            .lock()
            .push((self.clock.monotonic_ms(), url.to_owned()));
        let next = self.plan.lock().pop_front();
        match next {
            None | Some(Attempt::Refuse) => Err(TransportError::Io("refused".into())),
            Some(Attempt::Http(status)) => Err(TransportError::Http(status)),
            Some(Attempt::Accept(tx)) => {
                let (c2s, from_client) = mpsc::unbounded_channel();
                let (to_client, s2c) = mpsc::unbounded_channel();
                let _ = tx
                    .send(ServerSide {
                        url: url.to_owned(),
                        from_client,
                        to_client,
                        delivered: Vec::new(),
                    })
                    .await;
                Ok(Box::new(FakeTransport { c2s, s2c }))
            }
        }
    }
}

struct FakeTransport {
    c2s: mpsc::UnboundedSender<String>,
    s2c: mpsc::UnboundedReceiver<Result<WsEvent, TransportError>>,
}

#[async_trait]
impl WsTransport for FakeTransport {
    async fn send(&mut self, text: String) -> Result<(), TransportError> {
        self.c2s
            .send(text)
            .map_err(|_| TransportError::Io("server gone".into()))
    }
    async fn recv(&mut self) -> Result<WsEvent, TransportError> {
        match self.s2c.recv().await {
            Some(ev) => ev,
            // The test dropped the server side without a close frame: a
            // half-open connection (nothing arrives any more).
            None => std::future::pending().await,
        }
    }
    async fn close(&mut self, _code: u16, _reason: &str) {}
}

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    State(ConnectionState),
    Location(u64),
    Message(Option<u64>, String, MessageStatus),
    Outgoing(String, MessageStatus),
    Presence(String, bool),
    Typing(String),
    Error(String, String),
    /// Seqs of a trail.
    Trail(Vec<u64>),
    /// Online, dark ms, reason.
    Status(bool, Option<u64>, Option<String>),
    Receipt(String, bool, u64),
    Changed(u64, String, bool, bool),
}

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<Ev>>,
}

impl Recorder {
    fn states(&self) -> Vec<ConnectionState> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| match e {
                Ev::State(s) => Some(s.clone()),
                _ => None,
            })
            .collect()
    }
    fn messages(&self) -> Vec<(u64, String)> {
        self.events
            .lock()
            .iter()
            .filter_map(|e| match e {
                Ev::Message(Some(s), body, _) => Some((*s, body.clone())),
                _ => None,
            })
            .collect()
    }
    fn has(&self, ev: &Ev) -> bool {
        self.events.lock().contains(ev)
    }
}

impl BuyerListener for Recorder {
    fn on_connection_state(&self, state: ConnectionState) {
        self.events.lock().push(Ev::State(state));
    }
    fn on_location(&self, u: LocationUpdate) {
        self.events.lock().push(Ev::Location(u.seq));
    }
    fn on_message(&self, m: ChatEntry) {
        let mut events = self.events.lock();
        if m.edited || m.deleted {
            events.push(Ev::Changed(m.seq.unwrap_or(0), m.body, m.edited, m.deleted));
        } else {
            events.push(Ev::Message(m.seq, m.body, m.status));
        }
    }
    fn on_receipt(&self, u: ReceiptUpdate) {
        self.events.lock().push(Ev::Receipt(u.user, u.read, u.seq));
    }
    fn on_outgoing(&self, m: ChatEntry) {
        self.events.lock().push(Ev::Outgoing(m.body, m.status));
    }
    fn on_presence(&self, u: PresenceUpdate) {
        self.events.lock().push(Ev::Presence(u.user, u.online));
    }
    fn on_typing(&self, u: TypingUpdate) {
        self.events.lock().push(Ev::Typing(u.user));
    }
    fn on_error(&self, reference: String, code: String, _message: String) {
        self.events.lock().push(Ev::Error(reference, code));
    }
    fn on_trail(&self, t: TrailUpdate) {
        self.events
            .lock()
            .push(Ev::Trail(t.fixes.iter().map(|f| f.seq).collect()));
    }
    fn on_driver_status(&self, s: DriverStatusUpdate) {
        self.events
            .lock()
            .push(Ev::Status(s.online, s.dark_ms, s.reason));
    }
}

struct Tokens {
    n: Mutex<u32>,
    fail: Mutex<bool>,
}

impl Tokens {
    /// `tok1`, `tok2`, ... (or nothing while `fail`).
    fn next(&self) -> Option<String> {
        if *self.fail.lock() {
            return None;
        }
        let mut n = self.n.lock();
        *n += 1;
        Some(format!("tok{n}"))
    }
}

#[async_trait]
impl TokenProvider for Tokens {
    async fn token(&self) -> Option<String> {
        self.next()
    }
    async fn refresh_token(&self) -> Option<String> {
        self.next()
    }
}

/// The HTTP side of the fake server: serves room history pages from
/// `history` (refuses to connect while it is `None`) and records every
/// request.
#[derive(Default)]
struct FakeHttp {
    history: Mutex<Option<Vec<waypost_protocol::ChatMessage>>>,
    requests: Mutex<Vec<crate::transport::HttpRequest>>,
}

#[async_trait]
impl crate::transport::HttpTransport for FakeHttp {
    async fn send(
        &self,
        request: crate::transport::HttpRequest,
    ) -> Result<crate::transport::HttpResponse, crate::transport::TransportError> {
        self.requests.lock().push(request.clone());
        let Some(history) = self.history.lock().clone() else {
            return Err(crate::transport::TransportError::Connect {
                message: "refused (test)".into(),
            });
        };
        let after: u64 = request
            .url
            .split("after_seq=")
            .nth(1)
            .and_then(|r| r.split('&').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let page: Vec<_> = history.into_iter().filter(|m| m.seq > after).collect();
        let body = serde_json::to_vec(&waypost_protocol::MessagesResponse {
            messages: page,
            more: false,
            receipts: Vec::new(),
            unread: 0,
        })
        .unwrap();
        Ok(crate::transport::HttpResponse {
            status: 200,
            headers: Vec::new(),
            body,
        })
    }
}

struct Harness {
    client: Arc<BuyerClient>,
    http: Arc<FakeHttp>,
    rec: Arc<Recorder>,
    connector: Arc<FakeConnector>,
    tokens: Arc<Tokens>,
    env: ManualEnvironment,
    accepted: mpsc::Receiver<ServerSide>,
    accept_tx: mpsc::Sender<ServerSide>,
}

impl Harness {
    fn new(config: impl FnOnce(&mut BuyerConfig)) -> Self {
        let clock = Arc::new(TokioClock {
            origin: tokio::time::Instant::now(),
        });
        let connector = Arc::new(FakeConnector {
            plan: Mutex::new(VecDeque::new()),
            attempts: Mutex::new(Vec::new()),
            clock: Arc::clone(&clock),
        });
        let rec = Arc::new(Recorder::default());
        let tokens = Arc::new(Tokens {
            n: Mutex::new(0),
            fail: Mutex::new(false),
        });
        let env = ManualEnvironment::default();
        let mut cfg = BuyerConfig::new("http://127.0.0.1:9", "buyer-1");
        cfg.ping_interval_ms = 10_000;
        cfg.backoff_base_ms = 1_000;
        cfg.backoff_cap_ms = 8_000;
        config(&mut cfg);
        let (accept_tx, accepted) = mpsc::channel(16);
        let http = Arc::new(FakeHttp::default());
        let deps = BuyerDeps {
            clock,
            random: Arc::new(SeededRandom::new(7)),
            environment: Arc::new(env.clone()),
            transport: http.clone(),
            connector: connector.clone(),
        };
        let client =
            BuyerClient::start_with(cfg, rec.clone(), tokens.clone(), deps).expect("start");
        Self {
            client,
            http,
            rec,
            connector,
            tokens,
            env,
            accepted,
            accept_tx,
        }
    }

    fn plan(&self, n_refuse: usize) {
        let mut p = self.connector.plan.lock();
        for _ in 0..n_refuse {
            p.push_back(Attempt::Refuse);
        }
        p.push_back(Attempt::Accept(self.accept_tx.clone()));
    }

    async fn accept(&mut self) -> ServerSide {
        tokio::time::timeout(Duration::from_secs(600), self.accepted.recv())
            .await
            .expect("a connection within 10 simulated minutes")
            .expect("connector alive")
    }

    fn now(&self) -> u64 {
        self.connector.clock.monotonic_ms()
    }
}

/// Lets every runnable task run (simulated time does not move).
async fn settle() {
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
}

fn chat(room: &str, seq: u64, from: &str, body: &str) -> ServerFrame {
    ServerFrame::Message(waypost_protocol::ChatMessage {
        room: room.into(),
        seq,
        id: format!("{room}-{seq}"),
        from: from.into(),
        client_id: format!("{from}-{seq}"),
        body: body.into(),
        ts: seq as i64,
        ..Default::default()
    })
}

fn subscribed(channel: &str, recovered: bool) -> ServerFrame {
    ServerFrame::Subscribed {
        channel: channel.into(),
        recovered,
        high_seq: None,
    }
}

#[tokio::test(start_paused = true)]
async fn tracking_resumes_after_last_seq_across_reconnect() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    h.client.track_driver("d1".into()).unwrap();
    let mut s = h.accept().await;
    assert!(s.url.ends_with("/v1/ws?token=tok1"), "{}", s.url);
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Subscribe {
            channel: "tracking:d1".into(),
            after: None
        })
    );
    for seq in [3, 4, 4, 2] {
        s.send(&located("tracking:d1", seq));
    }
    settle().await;
    // Server restarts (4100): reconnect with backoff, resubscribe after 4.
    h.plan(0);
    s.close(4100);
    let mut s = h.accept().await;
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Subscribe {
            channel: "tracking:d1".into(),
            after: Some(4)
        })
    );
    s.send(&located("tracking:d1", 5));
    settle().await;
    assert_eq!(
        locations(&h.rec),
        [3, 4, 5],
        "each newer fix once, stale/duplicates dropped"
    );
    assert_eq!(
        h.client.latest_location("d1".into()).map(|l| l.seq),
        Some(5)
    );
    let states = h.rec.states();
    assert!(states.contains(&ConnectionState::Connected));
    assert!(states
        .iter()
        .any(|s| matches!(s, ConnectionState::BackingOff { attempt: 1, .. })));
}

#[tokio::test(start_paused = true)]
async fn backoff_is_full_jitter_and_grows_to_the_cap() {
    let mut h = Harness::new(|_| {});
    h.plan(8);
    let _s = h.accept().await;
    let attempts = h.connector.attempts.lock().clone();
    assert_eq!(attempts.len(), 9);
    let gaps: Vec<u64> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    // Window n is min(8 s, 1 s * 2^n); every wait lies inside its window.
    for (n, g) in gaps.iter().enumerate() {
        let window = (1_000u64 << n.min(3)).min(8_000);
        assert!(*g <= window, "wait {n} = {g} ms > window {window}");
    }
    // Jitter: waits are not simply the windows.
    assert!(gaps
        .iter()
        .any(|&g| g != 1_000 && g != 2_000 && g != 4_000 && g != 8_000));
    let backing: Vec<_> = h
        .rec
        .states()
        .into_iter()
        .filter_map(|s| match s {
            ConnectionState::BackingOff {
                attempt,
                retry_in_ms,
            } => Some((attempt, retry_in_ms)),
            _ => None,
        })
        .collect();
    assert_eq!(backing.len(), 8);
    assert_eq!(
        backing.iter().map(|b| b.1).collect::<Vec<_>>(),
        gaps,
        "the state shows the delay actually waited"
    );
}

#[tokio::test(start_paused = true)]
async fn network_back_reconnects_at_once() {
    let mut h = Harness::new(|c| {
        c.backoff_base_ms = 60_000;
        c.backoff_cap_ms = 60_000;
    });
    h.plan(3);
    // Let the first refusals happen, then the network goes away.
    while h.connector.attempts.lock().len() < 2 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The PlatformState notifies the client: no environment_changed().
    h.env.set_network(NetworkType::Offline);
    settle().await;
    assert_eq!(h.client.connection_state(), ConnectionState::Offline);
    let before = h.connector.attempts.lock().len();
    tokio::time::sleep(Duration::from_secs(600)).await;
    assert_eq!(
        h.connector.attempts.lock().len(),
        before,
        "no attempts while offline"
    );
    let back_at = h.now();
    h.env.set_network(NetworkType::Cellular);
    settle().await;
    let attempts = h.connector.attempts.lock().clone();
    assert_eq!(attempts.len(), before + 1);
    assert_eq!(
        attempts[before].0, back_at,
        "no backoff wait after network back"
    );

    // While backing off (60 s window), network back skips the wait too
    // (the deprecated explicit call still works).
    h.client.environment_changed().unwrap();
    settle().await;
    assert_eq!(h.connector.attempts.lock().len(), before + 2);
    assert_eq!(h.connector.attempts.lock()[before + 1].0, back_at);
    let _s = h.accept().await;
    assert!(h.now() - back_at < 60_000);
}

#[tokio::test(start_paused = true)]
async fn half_open_connection_is_dropped_within_two_intervals() {
    let mut h = Harness::new(|c| c.ping_interval_ms = 10_000);
    h.plan(0);
    let s = h.accept().await;
    // The server vanishes without a close (no FIN, no frames).
    let t0 = h.now();
    let ServerSide {
        from_client,
        to_client,
        ..
    } = s;
    drop(to_client);
    h.plan(0);
    let _s2 = h.accept().await;
    drop(from_client);
    let silent_until = h
        .rec
        .events
        .lock()
        .iter()
        .position(|e| matches!(e, Ev::State(ConnectionState::BackingOff { .. })));
    assert!(silent_until.is_some());
    let detected = h.connector.attempts.lock()[1].0;
    // Detection at 2 intervals after the last sign of life (t0), plus the
    // first backoff wait (at most 1 s).
    assert!(
        detected - t0 >= 20_000 && detected - t0 <= 21_000,
        "detected after {} ms",
        detected - t0
    );
}

#[tokio::test(start_paused = true)]
async fn healthy_connection_survives_pings() {
    let mut h = Harness::new(|c| c.ping_interval_ms = 10_000);
    h.plan(0);
    let mut s = h.accept().await;
    let pump = tokio::spawn(async move { while s.next().await.is_some() {} });
    tokio::time::sleep(Duration::from_secs(300)).await;
    assert_eq!(h.connector.attempts.lock().len(), 1, "never reconnected");
    assert_eq!(h.client.connection_state(), ConnectionState::Connected);
    pump.abort();
}

#[tokio::test(start_paused = true)]
async fn code_4001_refreshes_the_token_once_then_stops() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let s = h.accept().await;
    assert!(s.url.ends_with("token=tok1"));
    let t = h.now();
    h.plan(0);
    s.close(4001);
    let s = h.accept().await;
    assert!(s.url.ends_with("token=tok2"), "fresh token: {}", s.url);
    assert_eq!(h.now(), t, "reconnects at once with the new token");
    // The fresh token is refused as well: stop and say why.
    s.close(4001);
    settle().await;
    assert!(matches!(
        h.client.connection_state(),
        ConnectionState::Closed {
            reason: CloseReason::Unauthorized { .. }
        }
    ));
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        h.connector.attempts.lock().len(),
        2,
        "no reconnect after Closed"
    );
    // The app logs in again and asks to reconnect.
    h.plan(0);
    h.client.reconnect().unwrap();
    let s = h.accept().await;
    assert!(s.url.ends_with("token=tok3"));
    // A provider without a token closes as unauthorized.
    *h.tokens.fail.lock() = true;
    s.close(4001);
    for _ in 0..100 {
        if matches!(h.client.connection_state(), ConnectionState::Closed { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(matches!(
        h.client.connection_state(),
        ConnectionState::Closed {
            reason: CloseReason::Unauthorized { .. }
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn codes_4000_4099_stop_4100_4199_reconnect() {
    let mut h = Harness::new(|_| {});
    for code in [4100u16, 4101, 4102, 1006] {
        h.plan(0);
        let s = h.accept().await;
        s.close(code);
    }
    h.plan(0);
    let s = h.accept().await;
    s.close(4003);
    settle().await;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert_eq!(
        h.client.connection_state(),
        ConnectionState::Closed {
            reason: CloseReason::Refused {
                code: 4003,
                message: "test 4003".into()
            }
        }
    );
    assert_eq!(h.connector.attempts.lock().len(), 5);
}

#[tokio::test(start_paused = true)]
async fn chat_outbox_written_offline_goes_out_in_order_once_acked() {
    let mut h = Harness::new(|_| {});
    h.env.set_network(NetworkType::Offline);
    h.client.environment_changed().unwrap();
    h.client.join_chat("r".into()).unwrap();
    let a = h.client.send_message("r".into(), "one".into()).unwrap();
    let b = h.client.send_message("r".into(), "two".into()).unwrap();
    settle().await;
    assert_eq!(
        h.client
            .messages("r".into(), 50)
            .unwrap()
            .iter()
            .map(|m| (m.body.as_str(), m.status))
            .collect::<Vec<_>>(),
        [
            ("one", MessageStatus::Pending),
            ("two", MessageStatus::Pending)
        ],
        "offline: rendered from the store as pending"
    );
    h.plan(0);
    h.env.set_network(NetworkType::Wifi);
    h.client.environment_changed().unwrap();
    let mut s = h.accept().await;
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Subscribe {
            channel: "chat:r".into(),
            after: Some(0)
        })
    );
    let Some(ClientFrame::Send {
        client_id, body, ..
    }) = s.next().await
    else {
        panic!("expected the first send")
    };
    assert_eq!(
        (client_id.as_str(), body.as_str()),
        (a.client_id.as_str(), "one")
    );
    s.send(&subscribed("chat:r", true));
    s.send(&chat("r", 1, "vendor", "hello"));
    // The connection drops before the ack: the same client_id goes again.
    h.plan(0);
    s.close(4100);
    let mut s = h.accept().await;
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Subscribe {
            channel: "chat:r".into(),
            after: Some(1)
        })
    );
    let Some(ClientFrame::Send { client_id, .. }) = s.next().await else {
        panic!("expected the resend")
    };
    assert_eq!(client_id, a.client_id);
    s.send(&subscribed("chat:r", true));
    s.send(&ServerFrame::Sent {
        client_id: a.client_id.clone(),
        room: "r".into(),
        seq: 2,
        id: "r-2".into(),
    });
    let Some(ClientFrame::Send { client_id, .. }) = s.next().await else {
        panic!("expected the second message")
    };
    assert_eq!(client_id, b.client_id);
    // Its echo comes before its ack; then a late echo of message 2.
    s.send(&ServerFrame::Message(waypost_protocol::ChatMessage {
        room: "r".into(),
        seq: 3,
        id: "r-3".into(),
        from: "buyer-1".into(),
        client_id: b.client_id.clone(),
        body: "two".into(),
        ts: 9,
        ..Default::default()
    }));
    s.send(&ServerFrame::Sent {
        client_id: b.client_id.clone(),
        room: "r".into(),
        seq: 3,
        id: "r-3".into(),
    });
    s.send(&chat("r", 2, "buyer-1", "one"));
    settle().await;
    assert_eq!(
        h.rec.messages(),
        [(1, "hello".into()), (2, "one".into()), (3, "two".into())]
    );
    let outgoing: Vec<_> = h
        .rec
        .events
        .lock()
        .iter()
        .filter(|e| matches!(e, Ev::Outgoing(..)))
        .cloned()
        .collect();
    assert_eq!(
        outgoing,
        [
            Ev::Outgoing("one".into(), MessageStatus::Pending),
            Ev::Outgoing("two".into(), MessageStatus::Pending),
            Ev::Outgoing("one".into(), MessageStatus::Sent),
            Ev::Outgoing("two".into(), MessageStatus::Sent),
        ]
    );
    let stored = h.client.messages("r".into(), 50).unwrap();
    assert_eq!(
        stored.iter().map(|m| (m.seq, m.status)).collect::<Vec<_>>(),
        [
            (Some(1), MessageStatus::Received),
            (Some(2), MessageStatus::Sent),
            (Some(3), MessageStatus::Sent)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn chat_gap_is_filled_by_sync_in_order() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    h.client.join_chat("r".into()).unwrap();
    let mut s = h.accept().await;
    s.next().await;
    s.send(&subscribed("chat:r", true));
    s.send(&chat("r", 1, "v", "a"));
    s.send(&chat("r", 4, "v", "d"));
    s.send(&chat("r", 3, "v", "c"));
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Sync {
            room: "r".into(),
            after_seq: 1,
            limit: Some(chat::SYNC_PAGE)
        })
    );
    s.send(&ServerFrame::Synced {
        room: "r".into(),
        messages: vec![
            match chat("r", 2, "v", "b") {
                ServerFrame::Message(m) => m,
                _ => unreachable!(),
            },
            match chat("r", 3, "v", "c") {
                ServerFrame::Message(m) => m,
                _ => unreachable!(),
            },
        ],
        more: false,
    });
    s.send(&chat("r", 5, "v", "e"));
    s.send(&chat("r", 5, "v", "e"));
    settle().await;
    assert_eq!(
        h.rec.messages().iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
}

#[tokio::test(start_paused = true)]
async fn unacked_message_is_resent_then_failed_and_can_be_retried() {
    let mut h = Harness::new(|c| {
        c.ack_timeout_ms = 5_000;
        c.max_send_attempts = 2;
    });
    h.plan(0);
    let mut s = h.accept().await;
    let m = h.client.send_message("r".into(), "hi".into()).unwrap();
    let mut sends = 0;
    while let Ok(Some(f)) = tokio::time::timeout(Duration::from_secs(30), s.next()).await {
        if let ClientFrame::Send { client_id, .. } = f {
            assert_eq!(client_id, m.client_id);
            sends += 1;
        }
    }
    assert_eq!(sends, 2, "resent once after the ack timeout, then given up");
    assert!(h.rec.has(&Ev::Outgoing("hi".into(), MessageStatus::Failed)));
    assert_eq!(
        h.client.messages("r".into(), 10).unwrap()[0].status,
        MessageStatus::Failed
    );
    h.client
        .retry_message("r".into(), m.client_id.clone())
        .unwrap();
    let Some(ClientFrame::Send { client_id, .. }) = s.next().await else {
        panic!("expected the retried send")
    };
    assert_eq!(client_id, m.client_id);
    s.send(&ServerFrame::error(
        "bad_message",
        "too long",
        Some(m.client_id.clone()),
    ));
    settle().await;
    assert_eq!(
        h.client.messages("r".into(), 10).unwrap()[0].status,
        MessageStatus::Failed
    );
}

#[tokio::test(start_paused = true)]
async fn presence_typing_and_errors_reach_the_listener() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    h.client.join_chat("r".into()).unwrap();
    let mut s = h.accept().await;
    s.next().await;
    s.send(&ServerFrame::Presence {
        room: "r".into(),
        user: "vendor-1".into(),
        online: true,
    });
    // Repeated at every (re)subscribe: reported once.
    s.send(&ServerFrame::Presence {
        room: "r".into(),
        user: "vendor-1".into(),
        online: true,
    });
    s.send(&ServerFrame::Typing {
        room: "r".into(),
        user: "vendor-1".into(),
    });
    s.send(&ServerFrame::error(
        "forbidden",
        "no",
        Some("chat:r".into()),
    ));
    h.client.send_typing("r".into()).unwrap();
    h.client.send_typing("r".into()).unwrap();
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Typing { room: "r".into() })
    );
    settle().await;
    assert_eq!(
        h.rec
            .events
            .lock()
            .iter()
            .filter(|e| matches!(e, Ev::Presence(..)))
            .count(),
        1
    );
    assert!(h.rec.has(&Ev::Presence("vendor-1".into(), true)));
    assert!(h.rec.has(&Ev::Typing("vendor-1".into())));
    assert!(h.rec.has(&Ev::Error("chat:r".into(), "forbidden".into())));
    // The second typing within 2 s was not sent.
    assert!(tokio::time::timeout(Duration::from_millis(1_500), s.next())
        .await
        .is_err());
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_and_reports() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let _s = h.accept().await;
    h.client.shutdown().await;
    assert_eq!(
        h.client.connection_state(),
        ConnectionState::Closed {
            reason: CloseReason::Shutdown
        }
    );
    assert_eq!(
        h.client.track_driver("d".into()),
        Err(WaypostError::ShutDown)
    );
    let _ = json!(null) == Value::Null;
}

#[tokio::test(start_paused = true)]
async fn handshake_401_refreshes_the_token_and_403_stops() {
    let mut h = Harness::new(|_| {});
    h.connector.plan.lock().push_back(Attempt::Http(401));
    h.plan(0);
    let s = h.accept().await;
    assert!(
        s.url.ends_with("token=tok2"),
        "refreshed after HTTP 401: {}",
        s.url
    );
    h.connector.plan.lock().push_back(Attempt::Http(403));
    s.close(4100);
    for _ in 0..100 {
        if matches!(h.client.connection_state(), ConnectionState::Closed { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(matches!(
        h.client.connection_state(),
        ConnectionState::Closed {
            reason: CloseReason::Refused { code: 4003, .. }
        }
    ));
    // 503 while the server shuts down is retried.
    h.connector.plan.lock().push_back(Attempt::Http(503));
    h.plan(0);
    h.client.reconnect().unwrap();
    let _s = h.accept().await;
    assert_eq!(h.connector.attempts.lock().len(), 5);
}

fn wire(room: &str, seq: u64) -> waypost_protocol::ChatMessage {
    match chat(room, seq, "v", &format!("m{seq}")) {
        ServerFrame::Message(m) => m,
        _ => unreachable!(),
    }
}

/// Joins room `r`; the server cannot replay it (`recovered: false`, 5
/// messages) and sends message 6 live.
async fn join_unrecovered_room_at_6(h: &mut Harness) -> ServerSide {
    h.plan(0);
    h.client.join_chat("r".into()).unwrap();
    let mut s = h.accept().await;
    s.next().await;
    s.send(&ServerFrame::Subscribed {
        channel: "chat:r".into(),
        recovered: false,
        high_seq: Some(5),
    });
    s.send(&chat("r", 6, "v", "m6"));
    s
}

#[tokio::test(start_paused = true)]
async fn unrecovered_room_is_filled_from_http_history() {
    let mut h = Harness::new(|_| {});
    *h.http.history.lock() = Some((1..=5).map(|q| wire("r", q)).collect());
    let _s = join_unrecovered_room_at_6(&mut h).await;
    settle().await;
    assert_eq!(
        h.rec.messages().iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
    let requests = h.http.requests.lock().clone();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(
        requests[0].url,
        format!(
            "http://127.0.0.1:9/v1/chats/r/messages?after_seq=0&limit={}",
            chat::SYNC_PAGE
        )
    );
    assert!(requests[0]
        .headers
        .iter()
        .any(|hd| hd.name == "authorization" && hd.value == "Bearer tok1"));
}

#[tokio::test(start_paused = true)]
async fn unrecovered_room_falls_back_to_paged_sync_when_http_fails() {
    // The fake HTTP side refuses: history comes over the WebSocket
    // instead, page by page.
    let mut h = Harness::new(|_| {});
    let mut s = join_unrecovered_room_at_6(&mut h).await;
    let mut next = 0;
    for (after, page, more) in [(0, 1..=3, true), (3, 4..=5, false)] {
        let f = tokio::time::timeout(Duration::from_secs(30), s.next())
            .await
            .expect("a sync request");
        assert_eq!(
            f,
            Some(ClientFrame::Sync {
                room: "r".into(),
                after_seq: after,
                limit: Some(chat::SYNC_PAGE)
            })
        );
        s.send(&ServerFrame::Synced {
            room: "r".into(),
            messages: page.map(|q| wire("r", q)).collect(),
            more,
        });
        next += 1;
    }
    assert_eq!(next, 2);
    settle().await;
    assert_eq!(
        h.rec.messages().iter().map(|m| m.0).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5, 6]
    );
}

#[tokio::test(start_paused = true)]
async fn trimmed_history_is_skipped_instead_of_waited_for() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    h.client.join_chat("r".into()).unwrap();
    let mut s = h.accept().await;
    s.next().await;
    s.send(&subscribed("chat:r", true));
    s.send(&chat("r", 1, "v", "m1"));
    s.send(&chat("r", 50, "v", "m50"));
    assert!(matches!(
        s.next().await,
        Some(ClientFrame::Sync { after_seq: 1, .. })
    ));
    // The server kept only 40..: the page starts above the gap.
    s.send(&ServerFrame::Synced {
        room: "r".into(),
        messages: (40..=49).map(|q| wire("r", q)).collect(),
        more: false,
    });
    s.send(&chat("r", 51, "v", "m51"));
    settle().await;
    let seqs: Vec<u64> = h.rec.messages().iter().map(|m| m.0).collect();
    assert_eq!(seqs, [1].into_iter().chain(40..=51).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn outbox_survives_an_app_restart() {
    let dir = crate::test_util::TempDir::new("buyer-outbox");
    let db = dir.path().join("chat.db").to_string_lossy().into_owned();
    let h = Harness::new(|c| c.db_path = Some(db.clone()));
    h.env.set_network(NetworkType::Offline);
    h.client.environment_changed().unwrap();
    let written = h.client.send_message("r".into(), "kept".into()).unwrap();
    h.client.shutdown().await;
    drop(h);

    // The app starts again, online: the message goes out first thing.
    let mut h = Harness::new(|c| c.db_path = Some(db.clone()));
    h.plan(0);
    let mut s = h.accept().await;
    let Some(ClientFrame::Send {
        client_id, body, ..
    }) = s.next().await
    else {
        panic!("expected the stored message to be sent")
    };
    assert_eq!(
        (client_id.as_str(), body.as_str()),
        (written.client_id.as_str(), "kept")
    );
    s.send(&ServerFrame::Sent {
        client_id,
        room: "r".into(),
        seq: 1,
        id: "r-1".into(),
    });
    settle().await;
    assert_eq!(
        h.client.messages("r".into(), 10).unwrap()[0].status,
        MessageStatus::Sent
    );
}

fn locations(rec: &Recorder) -> Vec<u64> {
    rec.events
        .lock()
        .iter()
        .filter_map(|e| match e {
            Ev::Location(s) => Some(*s),
            _ => None,
        })
        .collect()
}

/// `token_expiring` → the provider's next token goes out as `refresh` on
/// the same socket, at half the token's lifetime before its exp; after
/// `refreshed` frames keep coming on it (none lost), twice over; a
/// narrower token's `unsubscribed` reaches the app; a refused refresh is
/// reported, and the 4001 at exp reconnects with a fresh token.
#[tokio::test(start_paused = true)]
async fn token_is_refreshed_in_band_without_reconnecting() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    h.client.track_driver("d1".into()).unwrap();
    let mut s = h.accept().await;
    assert!(s.url.ends_with("token=tok1"));
    assert!(matches!(
        s.next().await,
        Some(ClientFrame::Subscribe { .. })
    ));
    let now_s = |h: &Harness| (1_700_000_000_000 + h.now() as i64) as u64 / 1000;
    // An opaque token: the server names its exp (20 s from now).
    let t0 = h.now();
    let exp = now_s(&h) + 20;
    s.send(&located("tracking:d1", 1));
    s.send(&ServerFrame::TokenExpiring { exp });
    let mut next_seq = 2;
    for round in 0..2u64 {
        // Frames keep coming while the client fetches and refreshes.
        s.send(&located("tracking:d1", next_seq));
        next_seq += 1;
        let f = s.next().await;
        let want = format!("tok{}", round + 2);
        assert_eq!(f, Some(ClientFrame::Refresh { token: want }));
        if round == 0 {
            let waited = h.now() - t0;
            assert!(
                (9_000..=10_500).contains(&waited),
                "renewed {waited} ms after the warning (half of 20 s ahead)"
            );
        }
        s.send(&located("tracking:d1", next_seq));
        next_seq += 1;
        s.send(&ServerFrame::Refreshed {
            exp: now_s(&h) + 20,
        });
        s.send(&located("tracking:d1", next_seq));
        next_seq += 1;
    }
    settle().await;
    assert_eq!(locations(&h.rec), (1..next_seq).collect::<Vec<_>>());
    assert_eq!(h.connector.attempts.lock().len(), 1, "no reconnect");
    let connected = h
        .rec
        .states()
        .iter()
        .filter(|s| **s == ConnectionState::Connected)
        .count();
    assert_eq!(connected, 1);

    // A narrower token ended the subscription: the app hears it.
    s.send(&ServerFrame::Unsubscribed {
        channel: "tracking:d1".into(),
        reason: Some(waypost_protocol::UnsubscribeReason::Forbidden),
    });
    settle().await;
    assert!(h
        .rec
        .has(&Ev::Error("tracking:d1".into(), "forbidden".into())));

    // The third refresh is refused: reported, not retried in band; the
    // 4001 at exp reconnects with a fresh token from the provider.
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Refresh {
            token: "tok4".into()
        })
    );
    s.send(&ServerFrame::error("forbidden", "another user", None));
    settle().await;
    assert!(h.rec.has(&Ev::Error("token".into(), "forbidden".into())));
    tokio::time::sleep(Duration::from_secs(5)).await;
    h.plan(0);
    s.close(4001);
    let s = h.accept().await;
    assert!(s.url.ends_with("token=tok5"), "fresh token: {}", s.url);
    assert_eq!(h.connector.attempts.lock().len(), 2);
}

/// A renewal the provider cannot serve is tried again every
/// `RENEW_RETRY` while the token is valid; the socket stays up.
#[tokio::test(start_paused = true)]
async fn failed_renewal_is_retried_until_the_provider_answers() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let mut s = h.accept().await;
    let exp = (1_700_000_000_000 + h.now() as i64) as u64 / 1000 + 30;
    s.send(&ServerFrame::TokenExpiring { exp });
    *h.tokens.fail.lock() = true;
    // Past the renewal time (15 s) and some retries, within a ping
    // interval's silence budget.
    tokio::time::sleep(Duration::from_secs(19)).await;
    assert_eq!(h.client.connection_state(), ConnectionState::Connected);
    *h.tokens.fail.lock() = false;
    let f = s.next().await;
    assert_eq!(
        f,
        Some(ClientFrame::Refresh {
            token: "tok2".into()
        })
    );
    assert_eq!(h.connector.attempts.lock().len(), 1);
}

/// A per-subscription listener that records what it hears.
#[derive(Default)]
struct SubRec {
    locations: Mutex<Vec<(String, u64)>>,
    refused: Mutex<Vec<String>>,
    chat: Mutex<Vec<ChatEvent>>,
    states: Mutex<Vec<ConnectionState>>,
    /// Locations, trails and statuses in arrival order.
    driver: Mutex<Vec<Ev>>,
}

impl LocationListener for SubRec {
    fn on_location(&self, u: LocationUpdate) {
        self.driver.lock().push(Ev::Location(u.seq));
        self.locations.lock().push((u.driver_id, u.seq));
    }
    fn on_refused(&self, code: String, _message: String) {
        self.refused.lock().push(code);
    }
    fn on_trail(&self, t: TrailUpdate) {
        self.driver
            .lock()
            .push(Ev::Trail(t.fixes.iter().map(|f| f.seq).collect()));
    }
    fn on_driver_status(&self, s: DriverStatusUpdate) {
        self.driver
            .lock()
            .push(Ev::Status(s.online, s.dark_ms, s.reason));
    }
}

impl ChatListener for SubRec {
    fn on_chat_event(&self, event: ChatEvent) {
        self.chat.lock().push(event);
    }
}

impl ConnectionStateListener for SubRec {
    fn on_connection_state(&self, state: ConnectionState) {
        self.states.lock().push(state);
    }
}

fn loc(driver: &str, seq: u64) -> ServerFrame {
    ServerFrame::Location {
        channel: format!("tracking:{driver}"),
        driver_id: driver.into(),
        fix: Fix::new(seq, seq as i64, 1.0, 2.0),
    }
}

#[tokio::test(start_paused = true)]
async fn driver_subscriptions_hear_only_their_driver_and_the_last_one_unsubscribes() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let (a, b, c) = (
        Arc::new(SubRec::default()),
        Arc::new(SubRec::default()),
        Arc::new(SubRec::default()),
    );
    let sub_a = h.client.subscribe_driver("d1".into(), a.clone()).unwrap();
    let _sub_b = h.client.subscribe_driver("d2".into(), b.clone()).unwrap();
    let mut s = h.accept().await;
    let mut subscribed = vec![s.next().await, s.next().await];
    subscribed.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(
        subscribed,
        [
            Some(ClientFrame::Subscribe {
                channel: "tracking:d1".into(),
                after: None
            }),
            Some(ClientFrame::Subscribe {
                channel: "tracking:d2".into(),
                after: None
            }),
        ]
    );
    s.send(&loc("d1", 1));
    s.send(&loc("d2", 7));
    settle().await;
    assert_eq!(*a.locations.lock(), [("d1".to_string(), 1)]);
    assert_eq!(*b.locations.lock(), [("d2".to_string(), 7)]);
    assert!(
        h.rec.has(&Ev::Location(1)) && h.rec.has(&Ev::Location(7)),
        "the client-wide listener hears both"
    );

    // A second subscriber of d1 starts from the newest known position and
    // shares the wire subscription (no second subscribe).
    let sub_c = h.client.subscribe_driver("d1".into(), c.clone()).unwrap();
    settle().await;
    assert_eq!(*c.locations.lock(), [("d1".to_string(), 1)]);
    assert_eq!(h.client.subscription_count(), 3);

    // Cancelling one of two: it hears nothing more, d1 stays subscribed.
    sub_a.cancel();
    s.send(&loc("d1", 2));
    settle().await;
    assert_eq!(a.locations.lock().len(), 1, "nothing after cancel");
    assert_eq!(c.locations.lock().last(), Some(&("d1".to_string(), 2)));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), s.next())
            .await
            .is_err(),
        "no unsubscribe while c wants d1"
    );
    // Dropping the last one ends the wire subscription.
    drop(sub_c);
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Unsubscribe {
            channel: "tracking:d1".into()
        })
    );
    assert_eq!(h.client.subscription_count(), 1);
    assert_eq!(h.client.latest_location("d1".into()), None);

    // A refused subscribe reaches that driver's subscriptions.
    s.send(&ServerFrame::error(
        "forbidden",
        "no",
        Some("tracking:d2".into()),
    ));
    settle().await;
    assert_eq!(*b.refused.lock(), ["forbidden"]);
    assert!(a.refused.lock().is_empty());
}

#[tokio::test(start_paused = true)]
async fn driver_subscriptions_hear_their_drivers_trail_and_status_in_order() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let (a, b) = (Arc::new(SubRec::default()), Arc::new(SubRec::default()));
    let _sub_a = h.client.subscribe_driver("d1".into(), a.clone()).unwrap();
    let _sub_b = h.client.subscribe_driver("d2".into(), b.clone()).unwrap();
    let mut s = h.accept().await;
    let _ = (s.next().await, s.next().await);
    let status = |online: bool, dark_ms: Option<u64>| ServerFrame::DriverStatus {
        channel: "tracking:d1".into(),
        driver_id: "d1".into(),
        body: waypost_protocol::DriverStatusBody {
            status: if online {
                waypost_protocol::DriverState::Online
            } else {
                waypost_protocol::DriverState::Offline
            },
            last_seen_ms: 1_000,
            dark_ms,
            reason: online.then_some(waypost_protocol::SilenceReason::Offline),
            buffered: None,
        },
    };
    s.send(&loc("d1", 1));
    s.send(&status(false, None));
    s.send(&status(true, Some(45_000)));
    s.send(&ServerFrame::Trail {
        channel: "tracking:d1".into(),
        driver_id: "d1".into(),
        fixes: vec![Fix::new(2, 2, 1.0, 2.0), Fix::new(3, 3, 1.0, 2.0)],
    });
    s.send(&loc("d1", 4));
    settle().await;
    let heard = a.driver.lock().clone();
    assert_eq!(heard.len(), 5, "{heard:?}");
    assert_eq!(heard[0], Ev::Location(1));
    assert!(
        matches!(heard[1], Ev::Status(false, None, None)),
        "{heard:?}"
    );
    assert!(
        matches!(&heard[2], Ev::Status(true, Some(45_000), Some(_))),
        "{heard:?}"
    );
    assert_eq!(heard[3..], [Ev::Trail(vec![2, 3]), Ev::Location(4)]);
    assert!(
        b.driver.lock().is_empty(),
        "d2's subscription hears none of d1's"
    );
    // The client-wide listener hears them too.
    assert!(h.rec.has(&Ev::Trail(vec![2, 3])));
}

#[tokio::test(start_paused = true)]
async fn client_wide_tracking_and_a_subscription_keep_each_other_alive() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let a = Arc::new(SubRec::default());
    h.client.track_driver("d1".into()).unwrap();
    let sub = h.client.subscribe_driver("d1".into(), a.clone()).unwrap();
    let mut s = h.accept().await;
    assert!(matches!(
        s.next().await,
        Some(ClientFrame::Subscribe { .. })
    ));
    h.client.untrack_driver("d1".into()).unwrap();
    s.send(&loc("d1", 3));
    settle().await;
    assert_eq!(*a.locations.lock(), [("d1".to_string(), 3)]);
    drop(sub);
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Unsubscribe {
            channel: "tracking:d1".into()
        })
    );
}

#[tokio::test(start_paused = true)]
async fn chat_subscriptions_hear_only_their_room() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let r = Arc::new(SubRec::default());
    let sub = h.client.subscribe_chat("r".into(), r.clone()).unwrap();
    h.client.join_chat("q".into()).unwrap();
    let mut s = h.accept().await;
    s.next().await;
    s.next().await;
    s.send(&subscribed("chat:r", true));
    s.send(&subscribed("chat:q", true));
    s.send(&chat("r", 1, "vendor-1", "hello r"));
    s.send(&chat("q", 1, "vendor-1", "hello q"));
    s.send(&ServerFrame::Presence {
        room: "r".into(),
        user: "vendor-1".into(),
        online: true,
    });
    s.send(&ServerFrame::Typing {
        room: "q".into(),
        user: "vendor-1".into(),
    });
    h.client
        .send_message("r".into(), "mine".into())
        .expect("queued");
    settle().await;
    let events = r.chat.lock().clone();
    let bodies: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ChatEvent::Message { entry } => Some(entry.body.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(bodies, ["hello r"], "only its room");
    assert!(events.iter().any(|e| matches!(
        e,
        ChatEvent::Presence { update } if update.user == "vendor-1" && update.online
    )));
    assert!(events.iter().any(|e| matches!(
        e,
        ChatEvent::Outgoing { entry } if entry.body == "mine" && entry.status == MessageStatus::Pending
    )));
    assert!(!events.iter().any(|e| matches!(e, ChatEvent::Typing { .. })));
    assert_eq!(
        h.rec.messages(),
        [(1, "hello r".to_string()), (1, "hello q".to_string())],
        "the client-wide listener hears both rooms"
    );
    // Receipts and edits reach the room's subscription (only its room's).
    for room in ["q", "r"] {
        s.send(&ServerFrame::Receipt {
            room: room.into(),
            user: "vendor-1".into(),
            kind: ReceiptKind::Read,
            seq: 1,
        });
    }
    let mut edit = wire("r", 2);
    edit.kind = Some(MessageKind::Edit);
    edit.ref_seq = Some(1);
    edit.body = "hello r, edited".into();
    s.send(&ServerFrame::Message(edit));
    settle().await;
    let receipts: Vec<_> = r
        .chat
        .lock()
        .iter()
        .filter_map(|e| match e {
            ChatEvent::Receipt { update } => Some(update.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        receipts,
        [ReceiptUpdate {
            room: "r".into(),
            user: "vendor-1".into(),
            read: true,
            seq: 1
        }]
    );
    assert!(h.rec.has(&Ev::Receipt("vendor-1".into(), true, 1)));
    assert!(r.chat.lock().iter().any(|e| matches!(
        e,
        ChatEvent::Message { entry } if entry.seq == Some(1) && entry.edited && entry.body == "hello r, edited"
    )));
    s.send(&ServerFrame::error(
        "forbidden",
        "no",
        Some("chat:r".into()),
    ));
    settle().await;
    assert!(r.chat.lock().iter().any(|e| matches!(
        e,
        ChatEvent::Refused { code, .. } if code == "forbidden"
    )));
    let heard = r.chat.lock().len();
    drop(sub);
    // The outgoing "mine" goes out first; then the room is left.
    let mut left = false;
    for _ in 0..3 {
        if s.next().await
            == Some(ClientFrame::Unsubscribe {
                channel: "chat:r".into(),
            })
        {
            left = true;
            break;
        }
    }
    assert!(left, "the room is left when its only subscription ends");
    s.send(&chat("r", 2, "vendor-1", "too late"));
    settle().await;
    assert_eq!(r.chat.lock().len(), heard, "nothing after cancel");
}

#[tokio::test(start_paused = true)]
async fn state_watchers_get_the_current_state_then_changes_until_cancelled() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let s = h.accept().await;
    // Any frame from the server makes the connection `Connected`.
    s.send(&subscribed("chat:x", true));
    settle().await;
    let now = h.client.connection_state();
    assert_eq!(now, ConnectionState::Connected);
    let w = Arc::new(SubRec::default());
    let sub = h.client.watch_connection_state(w.clone()).unwrap();
    settle().await;
    assert_eq!(*w.states.lock(), [now], "the current state first");
    h.plan(0);
    h.client.reconnect().unwrap();
    let _s = h.accept().await;
    settle().await;
    let seen = w.states.lock().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert_eq!(
        seen[1..],
        h.rec.states()[h.rec.states().len() + 1 - seen.len()..]
    );
    sub.cancel();
    h.client.shutdown().await;
    assert!(h
        .rec
        .states()
        .last()
        .is_some_and(|s| matches!(s, ConnectionState::Closed { .. })));
    assert_eq!(w.states.lock().len(), seen.len(), "nothing after cancel");
    assert!(matches!(
        h.client
            .subscribe_driver("d1".into(), Arc::new(SubRec::default()))
            .map(drop),
        Err(WaypostError::ShutDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_subscription_listeners() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let a = Arc::new(SubRec::default());
    let _sub = h.client.subscribe_driver("d1".into(), a.clone()).unwrap();
    let _room = h.client.subscribe_chat("r".into(), a.clone()).unwrap();
    let _state = h.client.watch_connection_state(a.clone()).unwrap();
    let _s = h.accept().await;
    settle().await;
    assert_eq!(Arc::strong_count(&a), 4);
    h.client.shutdown().await;
    assert_eq!(Arc::strong_count(&a), 1, "the client holds no listener");
}

/// An order listener counting what it heard.
#[derive(Default)]
struct OrderHeard {
    entries: Mutex<Vec<u64>>,
    fixes: Mutex<Vec<u64>>,
}

impl OrderListener for OrderHeard {
    fn on_entry(&self, entry: OrderEntry) {
        self.entries.lock().push(entry.seq);
    }
    fn on_location(&self, update: LocationUpdate) {
        self.fixes.lock().push(update.seq);
    }
}

fn order_status(
    order: &str,
    seq: u64,
    status: waypost_protocol::OrderStatus,
    active: bool,
) -> ServerFrame {
    ServerFrame::Order {
        channel: format!("order:{order}"),
        seq,
        entry: waypost_protocol::FrameEntry {
            body: waypost_protocol::EntryBody::Status {
                event_id: format!("e{seq}"),
                status,
                active,
                driver_id: Some("d1".into()),
                vendor_id: None,
                destination: None,
                data: None,
            },
            ts: seq as i64,
        },
    }
}

fn located(channel: &str, seq: u64) -> ServerFrame {
    ServerFrame::Location {
        channel: channel.into(),
        driver_id: "d1".into(),
        fix: Fix::new(seq, seq as i64 * 1000, 1.0, 2.0),
    }
}

#[tokio::test(start_paused = true)]
async fn order_positions_update_latest_location() {
    use waypost_protocol::OrderStatus;
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let heard = Arc::new(OrderHeard::default());
    h.client.track_order("o1".into(), heard.clone()).unwrap();
    let mut s = h.accept().await;
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Subscribe {
            channel: "order:o1".into(),
            after: Some(0)
        })
    );
    assert_eq!(h.client.latest_location("d1".into()), None);
    s.send(&order_status("o1", 1, OrderStatus::PickedUp, true));
    s.send(&located("order:o1", 7));
    settle().await;
    assert_eq!(*heard.fixes.lock(), [7]);
    assert_eq!(
        h.client.latest_location("d1".into()).map(|l| l.seq),
        Some(7),
        "a position on the order channel is the driver's latest"
    );
    // The same driver tracked directly too: whichever channel brings the
    // newer fix wins, an older one on the other channel does not regress.
    h.client.track_driver("d1".into()).unwrap();
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Subscribe {
            channel: "tracking:d1".into(),
            after: None
        })
    );
    s.send(&located("tracking:d1", 5));
    settle().await;
    assert_eq!(
        h.client.latest_location("d1".into()).map(|l| l.seq),
        Some(7)
    );
    s.send(&located("tracking:d1", 9));
    settle().await;
    assert_eq!(
        h.client.latest_location("d1".into()).map(|l| l.seq),
        Some(9)
    );
    s.send(&located("order:o1", 10));
    settle().await;
    assert_eq!(
        h.client.latest_location("d1".into()).map(|l| l.seq),
        Some(10)
    );
    // The order ends: its channel's positions are not taken any more.
    s.send(&order_status("o1", 2, OrderStatus::Delivered, false));
    s.send(&located("order:o1", 11));
    settle().await;
    assert_eq!(*heard.entries.lock(), [1, 2]);
    assert_eq!(*heard.fixes.lock(), [7, 10]);
    assert_eq!(
        h.client.latest_location("d1".into()).map(|l| l.seq),
        Some(10)
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_the_client_without_shutdown_releases_every_listener() {
    let mut h = Harness::new(|_| {});
    h.plan(0);
    let sub = Arc::new(SubRec::default());
    let _t = h.client.subscribe_driver("d1".into(), sub.clone()).unwrap();
    let _s = h.accept().await;
    settle().await;
    let rec = Arc::clone(&h.rec);
    assert!(Arc::strong_count(&rec) > 2);
    drop(h);
    settle().await;
    assert_eq!(
        Arc::strong_count(&rec),
        1,
        "the client-wide listener is released"
    );
    assert_eq!(Arc::strong_count(&sub), 1, "and the subscription's");
}

#[tokio::test(start_paused = true)]
async fn receipts_edits_and_deletes() {
    let mut h = Harness::new(|_| {});
    h.client.join_chat("r".into()).unwrap();
    h.plan(0);
    let mut s = h.accept().await;
    assert!(matches!(
        s.next().await,
        Some(ClientFrame::Subscribe { .. })
    ));
    s.send(&subscribed("chat:r", true));
    s.send(&chat("r", 1, "vendor", "one"));
    s.send(&chat("r", 2, "vendor", "two"));
    settle().await;
    // Stored messages are acknowledged as delivered at the next tick, once
    // for the newest.
    tokio::time::sleep(Duration::from_millis(600)).await;
    h.client.mark_read("r".into(), 1).unwrap();
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Receipt {
            room: "r".into(),
            seq: 1,
            kind: ReceiptKind::Read
        })
    );
    assert_eq!(s.delivered, [("r".to_owned(), 2)]);
    assert_eq!(h.client.unread_count("r".into()).unwrap(), 1);

    // The vendor edits 1 and deletes 2: the timeline shows the result.
    let mut edit = wire("r", 3);
    edit.kind = Some(MessageKind::Edit);
    edit.ref_seq = Some(1);
    edit.body = "one, fixed".into();
    let mut del = wire("r", 4);
    del.kind = Some(MessageKind::Delete);
    del.ref_seq = Some(2);
    s.send(&ServerFrame::Message(edit));
    s.send(&ServerFrame::Message(del));
    s.send(&ServerFrame::Receipt {
        room: "r".into(),
        user: "vendor".into(),
        kind: ReceiptKind::Read,
        seq: 4,
    });
    settle().await;
    assert!(h.rec.has(&Ev::Changed(1, "one, fixed".into(), true, false)));
    assert!(h.rec.has(&Ev::Changed(2, String::new(), false, true)));
    assert!(h.rec.has(&Ev::Receipt("vendor".into(), true, 4)));
    let timeline = h.client.messages("r".into(), 10).unwrap();
    assert_eq!(
        timeline
            .iter()
            .map(|m| (m.seq, m.body.as_str(), m.deleted))
            .collect::<Vec<_>>(),
        [(Some(1), "one, fixed", false), (Some(2), "", true)]
    );
    assert_eq!(h.client.unread_count("r".into()).unwrap(), 0);
    let receipts = h.client.receipts("r".into()).unwrap();
    assert!(receipts
        .iter()
        .any(|r| r.user == "vendor" && (r.delivered, r.read) == (4, 4)));

    // Own edits and deletes go out through the outbox, one at a time,
    // each with a client id of its own.
    h.client
        .edit_message("r".into(), 1, "mine, fixed".into())
        .unwrap();
    h.client.delete_message("r".into(), 1).unwrap();
    let Some(ClientFrame::Edit {
        room,
        seq,
        body,
        client_id: Some(edit_id),
    }) = s.next().await
    else {
        panic!("expected the edit")
    };
    assert_eq!((room.as_str(), seq, body.as_str()), ("r", 1, "mine, fixed"));
    s.send(&ServerFrame::Sent {
        client_id: edit_id,
        room: "r".into(),
        seq: 5,
        id: "r-5".into(),
    });
    let Some(ClientFrame::Delete {
        room,
        seq,
        client_id: Some(_),
    }) = s.next().await
    else {
        panic!("expected the delete")
    };
    assert_eq!((room.as_str(), seq), ("r", 1));
    // The ack applied the edit in the room's order.
    assert!(h
        .rec
        .has(&Ev::Changed(1, "mine, fixed".into(), true, false)));
    assert!(h.client.edit_message("r".into(), 5, String::new()).is_err());
}

#[tokio::test(start_paused = true)]
async fn edits_and_deletes_written_offline_go_out_once() {
    let mut h = Harness::new(|_| {});
    h.client.join_chat("r".into()).unwrap();
    h.plan(0);
    let mut s = h.accept().await;
    assert!(matches!(
        s.next().await,
        Some(ClientFrame::Subscribe { .. })
    ));
    s.send(&subscribed("chat:r", true));
    s.send(&chat("r", 1, "buyer-1", "mine"));
    s.send(&chat("r", 2, "buyer-1", "oops"));
    settle().await;
    h.env.set_network(NetworkType::Offline);
    h.client.environment_changed().unwrap();
    settle().await;
    h.client
        .edit_message("r".into(), 1, "mine, fixed".into())
        .unwrap();
    h.client.delete_message("r".into(), 2).unwrap();
    settle().await;
    let timeline = |h: &Harness| {
        h.client
            .messages("r".into(), 10)
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, m.body, m.edited, m.deleted))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        timeline(&h),
        [
            (Some(1), "mine".to_owned(), false, false),
            (Some(2), "oops".to_owned(), false, false)
        ],
        "queued changes are not listed as messages"
    );

    // Back online: the edit goes out; the connection drops before its ack
    // and the same edit (same client id) goes again.
    h.plan(0);
    h.env.set_network(NetworkType::Wifi);
    h.client.environment_changed().unwrap();
    let mut s = h.accept().await;
    assert_eq!(
        s.next().await,
        Some(ClientFrame::Subscribe {
            channel: "chat:r".into(),
            after: Some(2)
        })
    );
    let Some(ClientFrame::Edit {
        seq: 1,
        client_id: Some(edit_id),
        ..
    }) = s.next().await
    else {
        panic!("expected the queued edit")
    };
    h.plan(0);
    s.close(4100);
    let mut s = h.accept().await;
    assert!(matches!(
        s.next().await,
        Some(ClientFrame::Subscribe { .. })
    ));
    let Some(ClientFrame::Edit {
        seq: 1,
        client_id: Some(again),
        ..
    }) = s.next().await
    else {
        panic!("expected the resent edit")
    };
    assert_eq!(again, edit_id);
    s.send(&subscribed("chat:r", true));
    s.send(&ServerFrame::Sent {
        client_id: edit_id.clone(),
        room: "r".into(),
        seq: 3,
        id: "r-3".into(),
    });
    let Some(ClientFrame::Delete {
        seq: 2,
        client_id: Some(delete_id),
        ..
    }) = s.next().await
    else {
        panic!("expected the queued delete after the edit's ack")
    };
    // The room echoes both entries (the edit again, after its ack), then
    // the delete's ack arrives last.
    let mut edit = wire("r", 3);
    edit.from = "buyer-1".into();
    edit.client_id = edit_id;
    edit.kind = Some(MessageKind::Edit);
    edit.ref_seq = Some(1);
    edit.body = "mine, fixed".into();
    let mut del = wire("r", 4);
    del.from = "buyer-1".into();
    del.client_id = delete_id.clone();
    del.kind = Some(MessageKind::Delete);
    del.ref_seq = Some(2);
    del.body = String::new();
    s.send(&ServerFrame::Message(edit));
    s.send(&ServerFrame::Message(del));
    s.send(&ServerFrame::Sent {
        client_id: delete_id,
        room: "r".into(),
        seq: 4,
        id: "r-4".into(),
    });
    settle().await;
    assert_eq!(
        timeline(&h),
        [
            (Some(1), "mine, fixed".to_owned(), true, false),
            (Some(2), String::new(), false, true)
        ]
    );
    let changes = |want: &Ev| h.rec.events.lock().iter().filter(|e| *e == want).count();
    assert_eq!(
        changes(&Ev::Changed(1, "mine, fixed".into(), true, false)),
        1
    );
    assert_eq!(changes(&Ev::Changed(2, String::new(), false, true)), 1);
    // Nothing is left to send or resend (pings are answered by `next`).
    assert!(tokio::time::timeout(Duration::from_secs(30), s.next())
        .await
        .is_err());
}
