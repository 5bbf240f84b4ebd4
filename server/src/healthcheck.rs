//! `waypost healthcheck`: a tiny HTTP/1.0 probe of `/healthz` for container
//! `HEALTHCHECK`s, so images need neither curl nor a shell (it works in a
//! `FROM scratch` image too). Exit status 0 when the server answers 200.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Why the probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("unsupported URL {0:?}: expected http://host:port/path")]
    Url(String),
    #[error("cannot reach {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("unhealthy: {0}")]
    Status(String),
}

/// Splits `http://host:port/path` into `("host:port", "/path")`.
fn split_url(url: &str) -> Result<(String, String), ProbeError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ProbeError::Url(url.to_owned()))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(ProbeError::Url(url.to_owned()));
    }
    let authority = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    Ok((authority, path.to_owned()))
}

/// GETs `url` and succeeds on a `200` status line.
pub fn probe(url: &str, timeout: Duration) -> Result<(), ProbeError> {
    let (authority, path) = split_url(url)?;
    let addr = authority
        .to_socket_addrs()
        .map_err(|source| ProbeError::Connect {
            addr: authority.clone(),
            source,
        })?
        .next()
        .ok_or_else(|| ProbeError::Url(url.to_owned()))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, timeout).map_err(|source| ProbeError::Connect {
            addr: authority.clone(),
            source,
        })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nUser-Agent: waypost-healthcheck\r\n\r\n"
    );
    stream.write_all(request.as_bytes())?;
    // The status line is all we need; read a bounded prefix.
    let mut buf = [0u8; 256];
    let mut n = 0;
    while n < buf.len() {
        let read = stream.read(&mut buf[n..])?;
        if read == 0 {
            break;
        }
        n += read;
        if buf[..n].contains(&b'\n') {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]);
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    if status_line.split_whitespace().nth(1) == Some("200") {
        Ok(())
    } else {
        Err(ProbeError::Status(status_line))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            split_url("http://127.0.0.1:8080/healthz").unwrap(),
            ("127.0.0.1:8080".into(), "/healthz".into())
        );
        assert_eq!(
            split_url("http://localhost").unwrap(),
            ("localhost:80".into(), "/".into())
        );
        assert!(split_url("https://x/").is_err());
        assert!(split_url("http:///x").is_err());
    }

    #[tokio::test]
    async fn probes_a_real_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = Vec::new();
                let mut chunk = [0u8; 512];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "request cut short");
                    req.extend_from_slice(&chunk[..n]);
                }
                s.write_all(format!("HTTP/1.1 {status}\r\n\r\n").as_bytes())
                    .await
                    .unwrap();
            }
        });
        let url = format!("http://{addr}/healthz");
        let u = url.clone();
        tokio::task::spawn_blocking(move || probe(&u, Duration::from_secs(2)))
            .await
            .unwrap()
            .unwrap();
        let err = tokio::task::spawn_blocking(move || probe(&url, Duration::from_secs(2)))
            .await
            .unwrap()
            .unwrap_err();
        assert!(
            matches!(err, ProbeError::Status(ref s) if s.contains("503")),
            "{err}"
        );
        server.await.unwrap();
        // Nothing listening any more.
        assert!(matches!(
            probe(&format!("http://{addr}/"), Duration::from_secs(1)),
            Err(ProbeError::Connect { .. })
        ));
    }
}
