//! Shared by the `buyer_*` suites: a recording listener for the buyer SDK,
//! a buyer started against a spawned server, and a simulated driver that
//! posts a moving position over HTTP.

#![allow(dead_code)]

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use waypost_e2e::{now_ms, token, MintingTokens};
use waypost_protocol::Role;
use waypost_sdk::buyer::{
    BuyerClient, BuyerConfig, BuyerDeps, BuyerListener, ChatEntry, ConnectionState, LocationUpdate,
    MessageStatus, PresenceUpdate, TypingUpdate,
};
use waypost_sdk::env::{ManualEnvironment, NetworkType};
use waypost_sdk::{StaticToken, TokenProvider};

/// How long the helpers wait for a state to be reached.
const T: Duration = Duration::from_secs(30);

/// Everything a buyer's listener heard.
#[derive(Default)]
pub struct Recorder {
    pub states: Mutex<Vec<ConnectionState>>,
    pub locations: Mutex<Vec<LocationUpdate>>,
    pub messages: Mutex<Vec<ChatEntry>>,
    pub outgoing: Mutex<Vec<ChatEntry>>,
    pub presence: Mutex<Vec<PresenceUpdate>>,
    pub errors: Mutex<Vec<(String, String, String)>>,
    pub changed: Notify,
}

impl Recorder {
    /// Waits (real time) until `cond` holds, up to `within`.
    pub async fn until(
        &self,
        within: Duration,
        what: &str,
        cond: impl Fn(&Self) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if cond(self) {
                return Ok(());
            }
            let notified = self.changed.notified();
            if tokio::time::timeout_at(deadline, notified).await.is_err() && !cond(self) {
                bail!("timed out after {within:?} waiting for {what}");
            }
        }
    }

    pub fn last_location_seq(&self) -> Option<u64> {
        self.locations.lock().unwrap().last().map(|l| l.seq)
    }

    pub fn message_seqs(&self, room: &str) -> Vec<u64> {
        self.messages
            .lock()
            .unwrap()
            .iter()
            .filter(|m| m.room == room)
            .filter_map(|m| m.seq)
            .collect()
    }

    pub fn count_states(&self, f: impl Fn(&ConnectionState) -> bool) -> usize {
        self.states.lock().unwrap().iter().filter(|s| f(s)).count()
    }
}

impl BuyerListener for Recorder {
    fn on_connection_state(&self, state: ConnectionState) {
        self.states.lock().unwrap().push(state);
        self.changed.notify_waiters();
    }
    fn on_location(&self, update: LocationUpdate) {
        self.locations.lock().unwrap().push(update);
        self.changed.notify_waiters();
    }
    fn on_message(&self, message: ChatEntry) {
        self.messages.lock().unwrap().push(message);
        self.changed.notify_waiters();
    }
    fn on_outgoing(&self, message: ChatEntry) {
        self.outgoing.lock().unwrap().push(message);
        self.changed.notify_waiters();
    }
    fn on_presence(&self, update: PresenceUpdate) {
        self.presence.lock().unwrap().push(update);
        self.changed.notify_waiters();
    }
    fn on_typing(&self, _update: TypingUpdate) {}
    fn on_error(&self, reference: String, code: String, message: String) {
        self.errors.lock().unwrap().push((reference, code, message));
        self.changed.notify_waiters();
    }
}

/// Test settings: short pings and backoff so faults heal in seconds.
pub fn fast_config(base_url: String, user: &str) -> BuyerConfig {
    let mut c = BuyerConfig::new(base_url, user);
    c.ping_interval_ms = 1_000;
    c.connect_timeout_ms = 2_000;
    c.backoff_base_ms = 100;
    c.backoff_cap_ms = 1_000;
    c.ack_timeout_ms = 2_000;
    c.max_send_attempts = 1_000;
    c
}

pub struct Buyer {
    pub client: Arc<BuyerClient>,
    pub rec: Arc<Recorder>,
}

impl Buyer {
    pub fn start(config: BuyerConfig, token: String) -> Result<Self> {
        Self::start_with_tokens(config, Arc::new(StaticToken(token)))
    }

    /// With the app's token provider (e.g. [`MintingTokens`] for short-lived
    /// tokens refreshed in band).
    pub fn start_with_tokens(config: BuyerConfig, tokens: Arc<dyn TokenProvider>) -> Result<Self> {
        let rec = Arc::new(Recorder::default());
        let client = BuyerClient::start(config, rec.clone(), tokens)?;
        Ok(Self { client, rec })
    }
}

/// A driver posting a moving position, one fix per call, retrying each fix
/// until the server takes it.
pub struct MovingDriver {
    pub id: String,
    token: String,
    http: reqwest::Client,
    pub seq: u64,
}

impl MovingDriver {
    pub fn new(id: &str, token: String) -> Self {
        Self {
            id: id.to_owned(),
            token,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()
                .unwrap_or_default(),
            seq: 0,
        }
    }

    /// Posts the next fix to `base` (`http://host:port`); true when stored.
    pub async fn step(&mut self, base: &str) -> bool {
        let seq = self.seq + 1;
        let body = json!({"device_id": "phone", "fixes": [{
            "seq": seq, "ts": now_ms(),
            "lat": 52.52 + seq as f64 * 1e-4, "lon": 13.405 + seq as f64 * 5e-5
        }]});
        let ok = self
            .http
            .post(format!("{base}/v1/drivers/{}/locations", self.id))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            self.seq = seq;
        }
        ok
    }
}

pub struct Participant {
    pub user: String,
    pub client: Arc<BuyerClient>,
    pub rec: Arc<Recorder>,
    pub env: ManualEnvironment,
    /// The minting provider when started with a token lifetime.
    pub minting: Option<Arc<MintingTokens>>,
}

impl Participant {
    /// A client for `user` that joined `room`; its token also grants
    /// `extra` channels.
    pub fn start(
        base: &str,
        user: &str,
        role: Role,
        room: &str,
        extra: &[&str],
        db: Option<String>,
    ) -> Result<Self> {
        Self::start_with_ttl(base, user, role, room, extra, db, None)
    }

    /// Like [`Participant::start`]; with `token_ttl_s` its token provider
    /// mints tokens that live that long, so the SDK refreshes them in band
    /// (and after 4001) while it is used.
    pub fn start_with_ttl(
        base: &str,
        user: &str,
        role: Role,
        room: &str,
        extra: &[&str],
        db: Option<String>,
        token_ttl_s: Option<u64>,
    ) -> Result<Self> {
        let env = ManualEnvironment::default();
        let rec = Arc::new(Recorder::default());
        let mut cfg = fast_config(base.to_owned(), user);
        cfg.db_path = db;
        let chat = format!("chat:{room}");
        let mut channels = vec![chat.as_str()];
        channels.extend_from_slice(extra);
        let minting =
            token_ttl_s.map(|ttl| Arc::new(MintingTokens::new(user, role, &channels, ttl)));
        let tokens: Arc<dyn TokenProvider> = match &minting {
            Some(m) => m.clone(),
            None => Arc::new(StaticToken(token(user, role, &channels))),
        };
        let deps = BuyerDeps {
            environment: Arc::new(env.clone()),
            ..BuyerDeps::real(&cfg)?
        };
        let client = BuyerClient::start_with(cfg, rec.clone(), tokens, deps)?;
        client.join_chat(room.to_owned())?;
        Ok(Self {
            user: user.to_owned(),
            client,
            rec,
            env,
            minting,
        })
    }

    pub async fn set_online(&self, online: bool) -> Result<()> {
        self.env.set_network(if online {
            NetworkType::Wifi
        } else {
            NetworkType::Offline
        });
        self.client.environment_changed()?;
        let want = if online {
            ConnectionState::Connected
        } else {
            ConnectionState::Offline
        };
        self.rec
            .until(T, "network state", |r| {
                r.states.lock().unwrap().last() == Some(&want)
            })
            .await
    }

    pub async fn has(&self, room: &str, n: u64) -> Result<()> {
        self.rec
            .until(T, &format!("{} has {n} messages", self.user), |r| {
                r.message_seqs(room).len() as u64 >= n
            })
            .await
    }

    /// Every seq 1..=n exactly once, in order, in the listener and in the
    /// local store; nothing left pending.
    pub fn check_timeline(&self, room: &str, n: u64) -> Result<()> {
        let want: Vec<u64> = (1..=n).collect();
        let heard = self.rec.message_seqs(room);
        ensure!(heard == want, "{} heard {:?}", self.user, summary(&heard));
        let stored = self.client.messages(room.to_owned(), u32::MAX)?;
        let stored_seqs: Vec<u64> = stored.iter().filter_map(|m| m.seq).collect();
        ensure!(
            stored_seqs == want,
            "{} stored {:?}",
            self.user,
            summary(&stored_seqs)
        );
        ensure!(
            stored
                .iter()
                .all(|m| m.status != MessageStatus::Pending && m.status != MessageStatus::Failed),
            "{} has unsent messages",
            self.user
        );
        for m in &stored {
            let own = m.sender == self.user;
            ensure!(
                (m.status == MessageStatus::Sent) == own,
                "{}: status {:?} for a message from {}",
                self.user,
                m.status,
                m.sender
            );
        }
        Ok(())
    }
}

/// Short form of a long seq list for failure messages.
pub fn summary(seqs: &[u64]) -> String {
    if seqs.len() <= 20 {
        return format!("{seqs:?}");
    }
    format!(
        "{} items: {:?} … {:?}",
        seqs.len(),
        &seqs[..10],
        &seqs[seqs.len() - 10..]
    )
}
