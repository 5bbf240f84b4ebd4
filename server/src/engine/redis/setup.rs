//! Connection setup shared by everything on Redis: the engine's command and
//! pub/sub connections and the chat, presence and notification stores.

use std::path::Path;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};
use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates};

use super::commands::redis_err;
use super::options::{RedisOptions, RedisTls};
use crate::engine::EngineError;

/// A client for `url` (`redis://`, `rediss://` or `unix://`), with the TLS
/// material of `tls` for `rediss://`. TLS files with a plain URL are a
/// configuration error rather than silently unused.
pub fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, EngineError> {
    let info = url.into_connection_info().map_err(redis_err)?;
    let is_tls = matches!(info.addr, ConnectionAddr::TcpTls { .. });
    if !is_tls {
        if tls.is_configured() {
            return Err(EngineError::Redis(
                "--redis-ca/--redis-client-cert/--redis-client-key need a rediss:// URL".into(),
            ));
        }
        return redis::Client::open(info).map_err(redis_err);
    }
    // redis's rustls has no crypto provider of its own; ring is the one
    // this build carries. Installing fails only when one is already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(ClientTlsConfig {
            client_cert: read_pem(cert)?,
            client_key: read_pem(key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(EngineError::Redis(
                "--redis-client-cert and --redis-client-key go together".into(),
            ))
        }
    };
    let root_cert = tls.ca.as_deref().map(read_pem).transpose()?;
    redis::Client::build_with_tls(
        info,
        TlsCertificates {
            client_tls,
            root_cert,
        },
    )
    .map_err(redis_err)
}

fn read_pem(path: &Path) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|e| EngineError::Redis(format!("reading {}: {e}", path.display())))
}

/// The command connection's settings. The connection reconnects by itself:
/// up to 3 attempts about 1 s apart per loss (then the next command starts
/// over); `op_timeout` bounds every call meanwhile. Keepalive and
/// TCP_USER_TIMEOUT make a silently dead connection fail in ~25 s. Commands
/// from many requests share it, so TCP_NODELAY matters: with Nagle a command
/// written while the previous one is unacknowledged waits for a delayed ACK.
pub fn manager_config(opts: &RedisOptions) -> ConnectionManagerConfig {
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(
            TcpKeepalive::new()
                .with_time(Duration::from_secs(10))
                .with_interval(Duration::from_secs(5))
                .with_retries(3),
        )
        .set_user_timeout(Duration::from_secs(10));
    ConnectionManagerConfig::new()
        .set_connection_timeout(opts.op_timeout)
        .set_response_timeout(opts.op_timeout)
        .set_number_of_retries(2)
        .set_factor(2)
        .set_max_delay(1000)
        .set_tcp_settings(tcp)
}
