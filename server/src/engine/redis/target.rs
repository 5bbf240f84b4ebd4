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

/// A Redis Cluster: its client and how to reach single nodes.
pub(crate) struct ClusterTarget {
    pub client: redis::cluster::ClusterClient,
    template: ConnectionInfo,
    tls: RedisTls,
}

/// Where the Redis primary is.
pub(crate) enum Target {
    /// One URL.
    Direct(redis::Client),
    /// A Redis Cluster found from seed nodes; the cluster client follows
    /// its slots. `template` (the first seed's scheme, credentials) and
    /// `tls` make clients of single nodes (the sharded pub/sub).
    Cluster(Box<ClusterTarget>),
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
        if opts.cluster {
            return Self::cluster(url, opts);
        }
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

    /// `url`: comma-separated seed node URLs.
    fn cluster(url: &str, opts: &RedisOptions) -> Result<Self, EngineError> {
        if opts.sentinel.is_some() {
            return Err(EngineError::Redis(
                "--redis-sentinel and --engine redis-cluster exclude each other".into(),
            ));
        }
        let seeds = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.into_connection_info().map_err(redis_err))
            .collect::<Result<Vec<_>, _>>()?;
        let Some(template) = seeds.first().cloned() else {
            return Err(EngineError::Redis(
                "--redis-url lists no cluster node".into(),
            ));
        };
        let tcp = redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
            .connection_timeout(opts.op_timeout)
            .response_timeout(opts.op_timeout)
            .retries(6)
            .min_retry_wait(50)
            .max_retry_wait(1000)
            .tcp_settings(tcp);
        if matches!(template.addr, ConnectionAddr::TcpTls { .. }) {
            let _ = rustls::crypto::ring::default_provider().install_default();
            builder = builder.certs(certificates(&opts.tls)?);
        } else if opts.tls.is_configured() {
            return Err(EngineError::Redis(
                "--redis-ca/--redis-client-cert/--redis-client-key need rediss:// URLs".into(),
            ));
        }
        Ok(Self::Cluster(Box::new(ClusterTarget {
            client: builder.build().map_err(redis_err)?,
            template,
            tls: opts.tls.clone(),
        })))
    }

    /// A client of the cluster node at `host:port` (scheme, credentials and
    /// TLS as the seeds'), speaking RESP3 (sharded pub/sub pushes).
    pub fn node_client(&self, host: &str, port: u16) -> Result<redis::Client, EngineError> {
        let Self::Cluster(cluster) = self else {
            return Err(EngineError::Redis("not a cluster".into()));
        };
        let (template, tls) = (&cluster.template, &cluster.tls);
        let mut info = template.clone();
        info.addr = match info.addr {
            ConnectionAddr::TcpTls { insecure, .. } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure,
                tls_params: None,
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        info.redis.protocol = redis::ProtocolVersion::RESP3;
        client_for(info, tls)
    }

    pub fn is_sentinel(&self) -> bool {
        matches!(self, Self::Sentinel { .. })
    }

    /// A client for the current primary.
    pub async fn client(&self) -> Result<redis::Client, EngineError> {
        match self {
            Self::Direct(c) => Ok(c.clone()),
            Self::Cluster { .. } => {
                Err(EngineError::Redis("a cluster has no single primary".into()))
            }
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
    redis::Client::build_with_tls(info, certificates(tls)?).map_err(redis_err)
}

fn certificates(tls: &RedisTls) -> Result<TlsCertificates, EngineError> {
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
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

fn read_pem(path: &Path) -> Result<Vec<u8>, EngineError> {
    std::fs::read(path).map_err(|e| EngineError::Redis(format!("reading {}: {e}", path.display())))
}
