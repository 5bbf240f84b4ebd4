//! Connection setup shared by everything on Redis: the engine's command and
//! pub/sub connections and the chat, presence and notification stores
//! (where the primary is: [`super::target`]).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;
use redis::io::tcp::{socket2::TcpKeepalive, TcpSettings};

use super::commands::Commands;
use super::options::RedisOptions;
use super::target::Target;
use crate::engine::EngineError;

/// The command connection's settings. The connection reconnects by itself:
/// up to 3 attempts about 1 s apart per loss (then the next command starts
/// over); `op_timeout` bounds every call meanwhile. Keepalive and
/// TCP_USER_TIMEOUT make a silently dead connection fail in ~25 s. Commands
/// from many requests share it, so TCP_NODELAY matters: with Nagle a command
/// written while the previous one is unacknowledged waits for a delayed ACK.
fn manager_config(opts: &RedisOptions) -> ConnectionManagerConfig {
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

/// The target and the command connection `url` and `opts` describe: the one
/// setup of everything on Redis.
pub(crate) async fn commands(
    url: &str,
    opts: &RedisOptions,
) -> Result<(Arc<Target>, Commands), EngineError> {
    let target = Arc::new(Target::new(url, opts)?);
    let wait = (opts.wait_replicas > 0).then_some((opts.wait_replicas, opts.wait_timeout));
    let cmd = Commands::connect(
        Arc::clone(&target),
        manager_config(opts),
        opts.op_timeout,
        wait,
    )
    .await?;
    Ok((target, cmd))
}

/// One command connection to what `url`/`opts` name now (the primary, or
/// the cluster).
pub(crate) async fn connection_manager(
    url: &str,
    opts: &RedisOptions,
) -> Result<super::handle::RedisHandle, EngineError> {
    let (_, cmd) = commands(url, opts).await?;
    Ok(cmd.conn())
}
