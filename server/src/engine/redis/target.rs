//! Where the Redis primary is. [`Target`]: one URL, or found through
//! Sentinel (`SENTINEL get-master-addr-by-name`) each time a connection is
//! opened, so reconnects after a failover land on the new primary; and the
//! clients (with TLS) for it.

use std::path::Path;
use std::time::Duration;

use redis::{ClientTlsConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo, TlsCertificates};

use super::call::{redis_err, with_timeout};
use super::options::{RedisOptions, RedisTls};
use crate::engine::EngineError;

/// Where the Redis primary is.
pub(crate) enum Target {
    /// One URL.
    Direct(redis::Client),
    /// Asked of the sentinels (in order, the first that knows wins) each time
    /// a connection is opened.
    Sentinel {
        sentinels: Vec<redis::Client>,
        master: String,
        /// The URL's scheme, credentials and db; host and port are the
        /// primary's.
        template: ConnectionInfo,
        tls: RedisTls,
        op_timeout: Duration,
    },
}

impl Target {
    /// From the options: Sentinel when `opts.sentinel` is set (then `url`
    /// only gives scheme, credentials and db), else `url`.
    pub fn new(url: &str, opts: &RedisOptions) -> Result<Self, EngineError> {
        let Some(sentinel) = &opts.sentinel else {
            return Ok(Self::Direct(client(url, &opts.tls)?));
        };
        let template = url.into_connection_info().map_err(redis_err)?;
        let scheme = if matches!(template.addr, ConnectionAddr::TcpTls { .. }) {
            "rediss"
        } else {
            "redis"
        };
        let sentinels = sentinel
            .addrs
            .iter()
            .map(|a| client(&format!("{scheme}://{a}"), &opts.tls))
            .collect::<Result<Vec<_>, _>>()?;
        if sentinels.is_empty() {
            return Err(EngineError::Redis(
                "--redis-sentinel lists no sentinel".into(),
            ));
        }
        Ok(Self::Sentinel {
            sentinels,
            master: sentinel.master.clone(),
            template,
            tls: opts.tls.clone(),
            op_timeout: opts.op_timeout,
        })
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self, Self::Sentinel { .. })
    }

    /// A client for the current primary.
    pub async fn client(&self) -> Result<redis::Client, EngineError> {
        match self {
            Self::Direct(c) => Ok(c.clone()),
            Self::Sentinel {
                sentinels,
                master,
                template,
                tls,
                op_timeout,
            } => {
                let mut last = EngineError::Redis("no sentinel answered".into());
                for s in sentinels {
                    match ask_sentinel(s, master, *op_timeout).await {
                        Ok(Some((host, port))) => {
                            let mut info = template.clone();
                            info.addr = match info.addr {
                                ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                                    host,
                                    port,
                                    insecure,
                                    tls_params: None,
                                },
                                _ => ConnectionAddr::Tcp(host, port),
                            };
                            return client_for(info, tls);
                        }
                        Ok(None) => {
                            last = EngineError::Redis(format!(
                                "the sentinels do not know master {master:?}"
                            ))
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
        }
    }
}

async fn ask_sentinel(
    sentinel: &redis::Client,
    master: &str,
    limit: Duration,
) -> Result<Option<(String, u16)>, EngineError> {
    let mut conn = with_timeout(limit, sentinel.get_multiplexed_async_connection()).await?;
    with_timeout(
        limit,
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(master)
            .query_async(&mut conn),
    )
    .await
}

/// A client for `url` (`redis://`, `rediss://` or `unix://`), with the TLS
/// material of `tls` for `rediss://`. TLS files with a plain URL are a
/// configuration error rather than silently unused.
pub fn client(url: &str, tls: &RedisTls) -> Result<redis::Client, EngineError> {
    client_for(url.into_connection_info().map_err(redis_err)?, tls)
}

fn client_for(info: ConnectionInfo, tls: &RedisTls) -> Result<redis::Client, EngineError> {
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
