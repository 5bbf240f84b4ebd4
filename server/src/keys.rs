//! Token keys: a JWKS-style key set picked by `kid`, reloadable without a
//! restart.
//!
//! A key set holds HS256 secrets (`"kty":"oct"`) and RS256 (`"kty":"RSA"`) or
//! ES256 (`"kty":"EC"`, `"crv":"P-256"`) public keys, each under its `kid`.
//! A token names its key in the header's `kid`; a token without one uses the
//! set's default key (the `--jwt-secret`, or the file's key when it holds
//! exactly one). Each key accepts only its own algorithm, so an HS256 token
//! "signed" with an RSA key's public bytes is refused, and `alg: none` never
//! verifies.
//!
//! [`KeyStore`] keeps the set behind an [`ArcSwap`]: verification reads it
//! without a lock, and [`KeyStore::reload`] (on SIGHUP, see
//! [`reload_on_sighup`]) swaps in a freshly read file; connections verified
//! with the old set stay up. A file that fails to load leaves the old set in
//! force.
//!
//! ```json
//! {"keys": [
//!   {"kid": "2026-12", "kty": "oct", "k": "<base64url secret>"},
//!   {"kid": "auth-rsa-1", "kty": "RSA", "n": "<base64url>", "e": "AQAB"},
//!   {"kid": "auth-ec-1", "kty": "EC", "crv": "P-256", "x": "..", "y": ".."}
//! ]}
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use base64::Engine as _;
use jsonwebtoken::{decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header};
use jsonwebtoken::{errors::ErrorKind, Validation};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use waypost_protocol::Claims;

/// Seconds of clock skew allowed on `exp`.
const LEEWAY_S: u64 = 5;

/// Most keys one set may hold.
pub const MAX_KEYS: usize = 64;

/// Largest key file read.
const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Why a key set could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {0} is larger than 1 MiB")]
    TooLarge(PathBuf),
    #[error("key set is not a JWKS document ({{\"keys\":[..]}}): {0}")]
    Parse(#[from] serde_json::Error),
    #[error("key set holds no key")]
    Empty,
    #[error("key set holds more than {MAX_KEYS} keys")]
    TooMany,
    #[error("keys[{index}]: {message}")]
    BadKey { index: usize, message: String },
    #[error("two keys share the kid {0:?}")]
    DuplicateKid(String),
    #[error("no key to sign with{}", .0.as_deref().map(|k| format!(" (kid {k:?} unknown or public only)")).unwrap_or_default())]
    NoSigningKey(Option<String>),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("token expired")]
    Expired,
    #[error("unknown key id {0:?}")]
    UnknownKid(String),
    #[error("token has no kid and the key set has no default key")]
    NoKid,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// A verified token: its claims plus the registered claims revocation
/// looks at (`iat`, `jti`), which the wire `Claims` do not carry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Verified {
    #[serde(flatten)]
    pub claims: Claims,
    /// Issued at, Unix seconds.
    #[serde(default)]
    pub iat: Option<u64>,
    /// Token id.
    #[serde(default)]
    pub jti: Option<String>,
}

/// One verification key (and, for a shared secret, the signing key).
struct Key {
    alg: Algorithm,
    decoding: DecodingKey,
    /// Only for HS256: the server never holds RSA/EC private keys.
    encoding: Option<EncodingKey>,
    validation: Validation,
}

impl Key {
    fn new(alg: Algorithm, decoding: DecodingKey, encoding: Option<EncodingKey>) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_S;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Self {
            alg,
            decoding,
            encoding,
            validation,
        }
    }

    fn secret(secret: &[u8]) -> Self {
        Self::new(
            Algorithm::HS256,
            DecodingKey::from_secret(secret),
            Some(EncodingKey::from_secret(secret)),
        )
    }
}

/// An immutable set of keys by `kid`, with an optional default key for
/// tokens without a `kid`.
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    default: Option<Arc<Key>>,
    /// `kid` of the default key, if it has one (for signing).
    default_kid: Option<String>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kids: Vec<&String> = self.by_kid.keys().collect();
        kids.sort();
        f.debug_struct("KeySet")
            .field("kids", &kids)
            .field("default", &self.default.is_some())
            .finish()
    }
}

/// One entry of the file, as written (fields of every key type).
#[derive(Deserialize)]
struct RawJwk {
    kid: Option<String>,
    kty: String,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    k: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<RawJwk>,
}

fn field<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, String> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| format!("missing \"{name}\""))
}

impl RawJwk {
    fn into_key(self) -> Result<(String, Key), String> {
        let kid = field(&self.kid, "kid")?.to_owned();
        if let Some(u) = self.use_.as_deref() {
            if u != "sig" {
                return Err(format!("\"use\":{u:?} (only \"sig\" keys verify tokens)"));
            }
        }
        let (alg, key) = match self.kty.as_str() {
            "oct" => {
                let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(field(&self.k, "k")?.trim_end_matches('='))
                    .map_err(|e| format!("\"k\" is not base64url: {e}"))?;
                if secret.is_empty() {
                    return Err("empty secret".into());
                }
                ("HS256", Key::secret(&secret))
            }
            "RSA" => {
                let d =
                    DecodingKey::from_rsa_components(field(&self.n, "n")?, field(&self.e, "e")?)
                        .map_err(|e| format!("bad RSA key: {e}"))?;
                ("RS256", Key::new(Algorithm::RS256, d, None))
            }
            "EC" => {
                let crv = field(&self.crv, "crv")?;
                if crv != "P-256" {
                    return Err(format!("curve {crv:?} (only P-256, for ES256)"));
                }
                let d = DecodingKey::from_ec_components(field(&self.x, "x")?, field(&self.y, "y")?)
                    .map_err(|e| format!("bad EC key: {e}"))?;
                ("ES256", Key::new(Algorithm::ES256, d, None))
            }
            other => return Err(format!("\"kty\":{other:?} (oct, RSA or EC)")),
        };
        if let Some(a) = self.alg.as_deref() {
            if a != alg {
                return Err(format!(
                    "\"alg\":{a:?} does not fit \"kty\":{:?} ({alg})",
                    self.kty
                ));
            }
        }
        Ok((kid, key))
    }
}

impl KeySet {
    /// A single HS256 secret, used for every token (with or without a `kid`
    /// — there is nothing to choose between).
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            by_kid: HashMap::new(),
            default: Some(Arc::new(Key::secret(secret))),
            default_kid: None,
        }
    }

    /// Parses a JWKS document. With exactly one key, that key is also the
    /// default for tokens without a `kid`.
    pub fn from_jwks(json: &str) -> Result<Self, KeyError> {
        let raw: RawJwks = serde_json::from_str(json)?;
        if raw.keys.is_empty() {
            return Err(KeyError::Empty);
        }
        if raw.keys.len() > MAX_KEYS {
            return Err(KeyError::TooMany);
        }
        let mut by_kid = HashMap::new();
        for (index, jwk) in raw.keys.into_iter().enumerate() {
            let (kid, key) = jwk
                .into_key()
                .map_err(|message| KeyError::BadKey { index, message })?;
            if by_kid.insert(kid.clone(), Arc::new(key)).is_some() {
                return Err(KeyError::DuplicateKid(kid));
            }
        }
        let (default, default_kid) = if by_kid.len() == 1 {
            let (kid, key) = by_kid
                .iter()
                .next()
                .map(|(k, v)| (k.clone(), Arc::clone(v)))
                .unzip();
            (key, kid)
        } else {
            (None, None)
        };
        Ok(Self {
            by_kid,
            default,
            default_kid,
        })
    }

    /// Makes `secret` the key of tokens without a `kid` (rotating from a
    /// single secret to a key file keeps the old tokens valid).
    pub fn with_default_secret(mut self, secret: &[u8]) -> Self {
        self.default = Some(Arc::new(Key::secret(secret)));
        self.default_kid = None;
        self
    }

    /// Reads a JWKS file (at most 1 MiB).
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let read_err = |source| KeyError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_FILE_BYTES {
            return Err(KeyError::TooLarge(path.to_owned()));
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        Self::from_jwks(&text)
    }

    /// The `kid`s in the set, sorted.
    pub fn kids(&self) -> Vec<String> {
        let mut kids: Vec<String> = self.by_kid.keys().cloned().collect();
        kids.sort();
        kids
    }

    /// Verifies signature, algorithm and `exp` with the key the token names.
    pub fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        let header = decode_header(token).map_err(|e| VerifyError::Invalid(e.to_string()))?;
        let key = match header.kid.as_deref() {
            // A single secret verifies any token, kid or not.
            Some(kid) if !self.by_kid.is_empty() => self
                .by_kid
                .get(kid)
                .ok_or_else(|| VerifyError::UnknownKid(kid.chars().take(64).collect()))?,
            _ => self.default.as_ref().ok_or(VerifyError::NoKid)?,
        };
        match decode::<Verified>(token, &key.decoding, &key.validation) {
            Ok(data) => Ok(data.claims),
            Err(e) => match e.kind() {
                ErrorKind::ExpiredSignature => Err(VerifyError::Expired),
                _ => Err(VerifyError::Invalid(e.to_string())),
            },
        }
    }

    /// Signs `claims` with the HS256 key `kid` (or the default key), putting
    /// its `kid` in the header.
    pub fn mint<C: serde::Serialize>(
        &self,
        kid: Option<&str>,
        claims: &C,
    ) -> Result<String, KeyError> {
        let no_key = || KeyError::NoSigningKey(kid.map(str::to_owned));
        let (kid, key) = match kid {
            Some(k) => (Some(k.to_owned()), self.by_kid.get(k).ok_or_else(no_key)?),
            None => (
                self.default_kid.clone(),
                self.default.as_ref().ok_or_else(no_key)?,
            ),
        };
        let encoding = key.encoding.as_ref().ok_or_else(no_key)?;
        let mut header = Header::new(key.alg);
        header.kid = kid;
        encode(&header, claims, encoding).map_err(|e| KeyError::Sign(e.to_string()))
    }
}

/// Signs `claims` with a PEM private key (RS256: PKCS#1 or PKCS#8; ES256:
/// PKCS#8), as an auth service would; `waypost token --private-key`.
pub fn sign_with_pem<C: serde::Serialize>(
    alg: Algorithm,
    pem: &[u8],
    kid: Option<&str>,
    claims: &C,
) -> Result<String, KeyError> {
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(pem),
        other => return Err(KeyError::Sign(format!("{other:?} is not a PEM algorithm"))),
    }
    .map_err(|e| KeyError::Sign(format!("bad private key: {e}")))?;
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, &key).map_err(|e| KeyError::Sign(e.to_string()))
}

/// Where a [`KeyStore`] reloads its set from.
#[derive(Debug, Clone)]
pub struct KeySource {
    /// The `--jwt-keys` file.
    pub file: Option<PathBuf>,
    /// The `--jwt-secret`: the default key (for tokens without a `kid`).
    pub secret: Option<Vec<u8>>,
}

impl KeySource {
    /// Builds the set this source describes.
    pub fn load(&self) -> Result<KeySet, KeyError> {
        match (&self.file, &self.secret) {
            (Some(path), Some(secret)) => Ok(KeySet::load(path)?.with_default_secret(secret)),
            (Some(path), None) => KeySet::load(path),
            (None, Some(secret)) => Ok(KeySet::from_secret(secret)),
            (None, None) => Err(KeyError::Empty),
        }
    }
}

/// The key set in force, swapped atomically on reload.
pub struct KeyStore {
    current: ArcSwap<KeySet>,
    source: Option<KeySource>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("current", &*self.current.load())
            .finish()
    }
}

impl KeyStore {
    /// A fixed set (tests, one secret).
    pub fn fixed(set: KeySet) -> Self {
        Self {
            current: ArcSwap::from_pointee(set),
            source: None,
        }
    }

    /// Loads `source` now and keeps it for [`KeyStore::reload`].
    pub fn open(source: KeySource) -> Result<Self, KeyError> {
        let set = source.load()?;
        Ok(Self {
            current: ArcSwap::from_pointee(set),
            source: Some(source),
        })
    }

    /// The set in force.
    pub fn current(&self) -> Arc<KeySet> {
        self.current.load_full()
    }

    /// Re-reads the source and swaps the new set in; on error the old set
    /// stays. Returns the new set's kids.
    pub fn reload(&self) -> Result<Vec<String>, KeyError> {
        let Some(source) = &self.source else {
            return Ok(self.current.load().kids());
        };
        let set = source.load()?;
        let kids = set.kids();
        self.current.store(Arc::new(set));
        Ok(kids)
    }

    pub fn verify(&self, token: &str) -> Result<Verified, VerifyError> {
        self.current.load().verify(token)
    }

    pub fn mint<C: serde::Serialize>(
        &self,
        kid: Option<&str>,
        claims: &C,
    ) -> Result<String, KeyError> {
        self.current.load().mint(kid, claims)
    }
}

/// Reloads `store` on every SIGHUP until `shutdown`; a failed reload is
/// logged and the old keys stay in force. Connections are not touched.
pub async fn reload_on_sighup(store: Arc<KeyStore>, shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP: keys will not reload");
                return;
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                got = hup.recv() => {
                    if got.is_none() {
                        return;
                    }
                    match store.reload() {
                        Ok(kids) => tracing::info!(?kids, "SIGHUP: token keys reloaded"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP: token keys NOT reloaded, the previous keys stay in force"),
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = store;
        shutdown.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_protocol::Role;

    fn claims() -> Claims {
        Claims {
            sub: "b-1".into(),
            role: Role::Buyer,
            exp: 4_000_000_000,
            channels: Some(vec!["tracking:d-1".into()]),
        }
    }

    fn b64(s: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn two_secrets() -> KeySet {
        KeySet::from_jwks(&format!(
            r#"{{"keys":[{{"kid":"a","kty":"oct","k":"{}"}},{{"kid":"b","kty":"oct","k":"{}","alg":"HS256"}}]}}"#,
            b64(b"secret-a"),
            b64(b"secret-b")
        ))
        .unwrap()
    }

    #[test]
    fn tokens_pick_their_key_by_kid() {
        let set = two_secrets();
        assert_eq!(set.kids(), vec!["a", "b"]);
        let ta = set.mint(Some("a"), &claims()).unwrap();
        let tb = set.mint(Some("b"), &claims()).unwrap();
        assert_eq!(set.verify(&ta).unwrap().claims, claims());
        assert_eq!(set.verify(&tb).unwrap().claims, claims());
        // Neither key is the default with two keys: a kid-less token fails.
        let plain = KeySet::from_secret(b"secret-a")
            .mint(None, &claims())
            .unwrap();
        assert!(matches!(set.verify(&plain), Err(VerifyError::NoKid)));
        // ..unless a default secret is configured beside the file.
        let set = two_secrets().with_default_secret(b"secret-a");
        assert_eq!(set.verify(&plain).unwrap().claims, claims());
    }

    #[test]
    fn unknown_kid_and_wrong_key_are_refused() {
        let set = two_secrets();
        let other = KeySet::from_jwks(&format!(
            r#"{{"keys":[{{"kid":"c","kty":"oct","k":"{}"}}]}}"#,
            b64(b"secret-c")
        ))
        .unwrap();
        let tc = other.mint(Some("c"), &claims()).unwrap();
        assert!(matches!(set.verify(&tc), Err(VerifyError::UnknownKid(k)) if k == "c"));
        // Signed with b's secret but claiming kid a.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("a".into());
        let t = encode(&header, &claims(), &EncodingKey::from_secret(b"secret-b")).unwrap();
        assert!(matches!(set.verify(&t), Err(VerifyError::Invalid(_))));
    }

    #[test]
    fn a_single_secret_ignores_the_kid() {
        let set = KeySet::from_secret(b"s");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("whatever".into());
        let t = encode(&header, &claims(), &EncodingKey::from_secret(b"s")).unwrap();
        assert_eq!(set.verify(&t).unwrap().claims, claims());
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (json, want) in [
            (r#"{"keys":[]}"#, "no key"),
            (r#"[]"#, "JWKS"),
            (r#"{"keys":[{"kty":"oct","k":"YQ"}]}"#, "missing \"kid\""),
            (
                r#"{"keys":[{"kid":"a","kty":"oct","k":"YQ","alg":"RS256"}]}"#,
                "does not fit",
            ),
            (r#"{"keys":[{"kid":"a","kty":"OKP","x":"YQ"}]}"#, "kty"),
            (
                r#"{"keys":[{"kid":"a","kty":"EC","crv":"P-384","x":"YQ","y":"YQ"}]}"#,
                "P-384",
            ),
            (
                r#"{"keys":[{"kid":"a","kty":"oct","k":"YQ","use":"enc"}]}"#,
                "use",
            ),
            (
                r#"{"keys":[{"kid":"a","kty":"oct","k":"YQ"},{"kid":"a","kty":"oct","k":"Yg"}]}"#,
                "share",
            ),
        ] {
            let err = KeySet::from_jwks(json).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn a_public_key_cannot_sign() {
        // P-256 public point (the generator), valid as a verification key.
        let set = KeySet::from_jwks(
            r#"{"keys":[{"kid":"ec","kty":"EC","crv":"P-256",
               "x":"axfR8uEsQkf4vOblY6RA8ncDfYEt6zOg9KE5RdiYwpY",
               "y":"T-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU"}]}"#,
        )
        .unwrap();
        assert!(matches!(
            set.mint(Some("ec"), &claims()),
            Err(KeyError::NoSigningKey(_))
        ));
        assert!(matches!(
            set.mint(None, &claims()),
            Err(KeyError::NoSigningKey(_))
        ));
    }

    const JWKS: &str = include_str!("../testdata/jwt/jwks.json");
    const RSA_PEM: &[u8] = include_bytes!("../testdata/jwt/rsa-private.pem");
    const EC_PEM: &[u8] = include_bytes!("../testdata/jwt/ec-private.pem");

    #[test]
    fn rs256_and_es256_tokens_verify_with_their_public_keys() {
        let set = KeySet::from_jwks(JWKS).unwrap();
        let rs = sign_with_pem(Algorithm::RS256, RSA_PEM, Some("test-rsa"), &claims()).unwrap();
        let es = sign_with_pem(Algorithm::ES256, EC_PEM, Some("test-ec"), &claims()).unwrap();
        assert_eq!(set.verify(&rs).unwrap().claims, claims());
        assert_eq!(set.verify(&es).unwrap().claims, claims());
        // The right private key under the other key's kid.
        let swapped = sign_with_pem(Algorithm::ES256, EC_PEM, Some("test-rsa"), &claims()).unwrap();
        assert!(matches!(set.verify(&swapped), Err(VerifyError::Invalid(_))));
    }

    #[test]
    fn the_right_key_with_the_wrong_algorithm_is_refused() {
        let set = KeySet::from_jwks(JWKS).unwrap();
        // HS384 with the HS256 key's own secret.
        let mut header = Header::new(Algorithm::HS384);
        header.kid = Some("test-hs".into());
        let t = encode(
            &header,
            &claims(),
            &EncodingKey::from_secret(b"test-hs-secret-for-waypost-tests"),
        )
        .unwrap();
        assert!(matches!(set.verify(&t), Err(VerifyError::Invalid(_))));
        // The classic confusion: HS256 keyed with the RSA key's public bytes.
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("test-rsa".into());
        let t = encode(&header, &claims(), &EncodingKey::from_secret(RSA_PEM)).unwrap();
        assert!(matches!(set.verify(&t), Err(VerifyError::Invalid(_))));
        // And the right HS256 signature still verifies.
        let ok = set.mint(Some("test-hs"), &claims()).unwrap();
        assert_eq!(set.verify(&ok).unwrap().claims, claims());
    }

    #[test]
    fn reload_swaps_the_set_and_keeps_it_on_error() {
        let dir = std::env::temp_dir().join(format!("waypost-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys.json");
        let write = |kid: &str, secret: &[u8]| {
            std::fs::write(
                &path,
                format!(
                    r#"{{"keys":[{{"kid":"{kid}","kty":"oct","k":"{}"}}]}}"#,
                    b64(secret)
                ),
            )
            .unwrap()
        };
        write("old", b"one");
        let store = KeyStore::open(KeySource {
            file: Some(path.clone()),
            secret: None,
        })
        .unwrap();
        let old = store.mint(Some("old"), &claims()).unwrap();
        write("new", b"two");
        assert_eq!(store.reload().unwrap(), vec!["new"]);
        let new = store.mint(Some("new"), &claims()).unwrap();
        assert!(store.verify(&new).is_ok());
        assert!(matches!(
            store.verify(&old),
            Err(VerifyError::UnknownKid(_))
        ));
        std::fs::write(&path, "not json").unwrap();
        assert!(store.reload().is_err());
        assert!(store.verify(&new).is_ok(), "a bad file keeps the old keys");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
