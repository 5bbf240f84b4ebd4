//! The push flags of `waypost serve` and `waypost push-test`, and building
//! the push service from them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::devices::DeviceStore;
use super::providers::{Apns, ApnsConfig, Fcm, FcmConfig, Provider};
use super::{Push, PushConfig, PushMetrics};
use crate::webhooks::SystemClock;

/// Push flags (APNs and FCM credentials and endpoints, bounds).
#[derive(clap::Args, Debug, Clone)]
pub struct PushArgs {
    /// APNs signing key (`AuthKey_XXXXXXXXXX.p8`, PKCS#8 PEM); with
    /// --apns-key-id, --apns-team-id and --apns-topic turns APNs on.
    #[arg(long, env = "WAYPOST_APNS_KEY_FILE")]
    pub apns_key_file: Option<PathBuf>,
    /// The key's id (the `kid` of the provider token).
    #[arg(long, env = "WAYPOST_APNS_KEY_ID")]
    pub apns_key_id: Option<String>,
    /// The Apple developer team id (the `iss` of the provider token).
    #[arg(long, env = "WAYPOST_APNS_TEAM_ID")]
    pub apns_team_id: Option<String>,
    /// The app's bundle id (`apns-topic`; a device's `app_id` overrides it).
    #[arg(long, env = "WAYPOST_APNS_TOPIC")]
    pub apns_topic: Option<String>,
    /// APNs server (the sandbox is https://api.sandbox.push.apple.com).
    #[arg(
        long,
        env = "WAYPOST_APNS_ENDPOINT",
        default_value = "https://api.push.apple.com"
    )]
    pub apns_endpoint: String,
    /// Extra CA (PEM) trusted for the APNs endpoint (tests, gateways).
    #[arg(long, env = "WAYPOST_APNS_CA")]
    pub apns_ca: Option<PathBuf>,
    /// FCM service-account JSON (Firebase console → Project settings →
    /// Service accounts → Generate new private key); turns FCM on.
    #[arg(long, env = "WAYPOST_FCM_SERVICE_ACCOUNT")]
    pub fcm_service_account: Option<PathBuf>,
    /// FCM HTTP v1 server.
    #[arg(
        long,
        env = "WAYPOST_FCM_ENDPOINT",
        default_value = "https://fcm.googleapis.com"
    )]
    pub fcm_endpoint: String,
    /// Extra CA (PEM) trusted for FCM and its token URI (tests, gateways).
    #[arg(long, env = "WAYPOST_FCM_CA")]
    pub fcm_ca: Option<PathBuf>,
    /// Events of one channel within this window become one push.
    #[arg(long, env = "WAYPOST_PUSH_COLLAPSE", default_value = "1500ms", value_parser = humantime::parse_duration)]
    pub push_collapse: Duration,
    /// Pushes waiting to be sent, at most (the oldest is dropped).
    #[arg(long, env = "WAYPOST_PUSH_QUEUE", default_value_t = 10_000)]
    pub push_queue: usize,
    /// Pushes per user and second (sustained; bursts of ten).
    #[arg(long, env = "WAYPOST_PUSH_USER_RATE", default_value_t = 1)]
    pub push_user_rate: u32,
    /// Include a short preview (chat text, order status, event name).
    #[arg(long, env = "WAYPOST_PUSH_PREVIEWS")]
    pub push_previews: bool,
    /// Concurrent provider requests per process.
    #[arg(long, env = "WAYPOST_PUSH_WORKERS", default_value_t = 4)]
    pub push_workers: usize,
    /// Provider request timeout.
    #[arg(long, env = "WAYPOST_PUSH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub push_timeout: Duration,
}

impl PushArgs {
    pub fn config(&self) -> PushConfig {
        PushConfig {
            collapse_window: self.push_collapse,
            queue_cap: self.push_queue.max(1),
            user_rate_per_s: self.push_user_rate.max(1),
            previews: self.push_previews,
            workers: self.push_workers.clamp(1, 64),
            ..PushConfig::default()
        }
    }

    /// APNs, when its four settings are given (an error when only some
    /// are).
    pub fn apns(&self) -> anyhow::Result<Option<Arc<dyn Provider>>> {
        let (file, kid, team, topic) = match (
            &self.apns_key_file,
            &self.apns_key_id,
            &self.apns_team_id,
            &self.apns_topic,
        ) {
            (None, None, None, None) => return Ok(None),
            (Some(f), Some(k), Some(t), Some(p)) => (f, k, t, p),
            _ => anyhow::bail!(
                "APNs needs --apns-key-file, --apns-key-id, --apns-team-id and --apns-topic together"
            ),
        };
        let cfg = ApnsConfig {
            endpoint: self.apns_endpoint.clone(),
            key_id: kid.clone(),
            team_id: team.clone(),
            topic: topic.clone(),
            ca: self.apns_ca.clone(),
            timeout: self.push_timeout,
        };
        let apns = Apns::from_file(cfg, file, Arc::new(SystemClock))
            .with_context(|| format!("APNs key {}", file.display()))?;
        Ok(Some(Arc::new(apns)))
    }

    pub fn fcm(&self) -> anyhow::Result<Option<Arc<dyn Provider>>> {
        let Some(path) = &self.fcm_service_account else {
            return Ok(None);
        };
        let cfg = FcmConfig {
            endpoint: self.fcm_endpoint.clone(),
            ca: self.fcm_ca.clone(),
            timeout: self.push_timeout,
        };
        let fcm = Fcm::from_file(cfg, path, Arc::new(SystemClock))
            .with_context(|| format!("FCM service account {}", path.display()))?;
        Ok(Some(Arc::new(fcm)))
    }

    /// The push service over `devices`, reporting into `metrics`.
    pub fn build(
        &self,
        devices: Arc<dyn DeviceStore>,
        metrics: PushMetrics,
    ) -> anyhow::Result<Push> {
        let apns = self.apns()?;
        let fcm = self.fcm()?;
        if apns.is_some() || fcm.is_some() {
            tracing::info!(apns = apns.is_some(), fcm = fcm.is_some(), "push on");
        }
        Ok(Push::new(self.config(), devices, apns, fcm, metrics))
    }
}
