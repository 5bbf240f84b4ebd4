//! TLS material for tests: a throwaway CA, a server certificate for
//! `127.0.0.1`/`localhost` and a client certificate, made with the
//! `openssl` command line (Debian's `openssl` package; scripts/test installs
//! it), and a `redis-server` that speaks TLS with them.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{free_port, RedisServer};

/// PEM files in a temporary directory, removed on drop.
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Generates a CA (P-256), a server and a client certificate it signs.
    pub fn generate() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "waypost-tls-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        let me = Self { dir };
        let d = &me.dir;
        std::fs::write(
            d.join("ca.cnf"),
            "[req]\ndistinguished_name=dn\nx509_extensions=v3_ca\nprompt=no\n\
             [dn]\nCN=waypost-test-ca\n\
             [v3_ca]\nbasicConstraints=critical,CA:TRUE\n\
             keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
        )?;
        std::fs::write(
            d.join("server.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )?;
        std::fs::write(
            d.join("client.ext"),
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
        openssl(
            d,
            &["req", "-x509", "-nodes", "-days", "2", "-config", "ca.cnf"],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.crt"],
        )?;
        for (name, cn) in [("server", "localhost"), ("client", "waypost-test-client")] {
            openssl(
                d,
                &["req", "-new", "-nodes", "-subj", &format!("/CN={cn}")],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            )?;
            openssl(
                d,
                &[
                    "x509", "-req", "-days", "2", "-CA", "ca.crt", "-CAkey", "ca.key",
                ],
                &["-CAcreateserial"],
                &[
                    "-in",
                    &format!("{name}.csr"),
                    "-out",
                    &format!("{name}.crt"),
                    "-extfile",
                    &format!("{name}.ext"),
                ],
            )?;
        }
        Ok(me)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.crt")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    /// `--redis-ca` (and with `client`, the client certificate and key) as
    /// `waypost serve` arguments.
    pub fn serve_args(&self, client: bool) -> Vec<String> {
        let mut args = vec!["--redis-ca".into(), path_arg(&self.ca())];
        if client {
            args.extend([
                "--redis-client-cert".into(),
                path_arg(&self.client_cert()),
                "--redis-client-key".into(),
                path_arg(&self.client_key()),
            ]);
        }
        args
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn openssl(dir: &Path, a: &[&str], b: &[&str], c: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(a)
        .args(b)
        .args(c)
        .output()
        .context("running openssl (install the openssl package)")?;
    if !out.status.success() {
        bail!(
            "openssl {:?} failed: {}",
            a,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A `redis-server` with a TLS port next to its plain one (the plain port
/// only serves the harness's readiness check).
pub struct TlsRedis {
    pub redis: RedisServer,
    pub tls_port: u16,
}

impl TlsRedis {
    /// Starts it with `certs`; with `require_client_cert` it refuses clients
    /// without a certificate the CA signed (`--tls-auth-clients yes`).
    pub async fn start(certs: &TestCerts, require_client_cert: bool) -> Result<Self> {
        let tls_port = free_port()?;
        let extra = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            path_arg(&certs.server_cert()),
            "--tls-key-file".into(),
            path_arg(&certs.server_key()),
            "--tls-ca-cert-file".into(),
            path_arg(&certs.ca()),
            "--tls-auth-clients".into(),
            if require_client_cert { "yes" } else { "no" }.into(),
        ];
        let redis = RedisServer::start_with_args(free_port()?, extra).await?;
        Ok(Self { redis, tls_port })
    }

    /// The `rediss://` URL of the TLS port.
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.tls_port)
    }
}
