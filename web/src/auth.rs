//! Who is asking: bearer tokens (for scripts and scrapers) and browser sessions from the login
//! form, each with a role. Passwords are stored as argon2id hashes; tokens are 32 random bytes,
//! so a SHA-256 of them is enough (there is nothing to guess, and it is cheap per request).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{WebConfig, WebError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also changes things: silences.
    Admin,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub name: String,
    pub role: Role,
}

pub const SESSION_COOKIE: &str = "outpost_session";

pub struct Auth {
    users: Vec<crate::User>,
    tokens: Vec<crate::Token>,
    session_ttl: Duration,
    sessions: Mutex<HashMap<String, (Identity, Instant)>>,
    throttle: Mutex<Throttle>,
    /// Verified against for a name that is no user's, so that an unknown name costs the same
    /// argon2 work as a known one and names cannot be told apart by timing.
    decoy_hash: Option<String>,
    /// HTTP basic logins recently verified, by the SHA-256 of name and password: a client that
    /// sends them with every request (Grafana) costs one argon2 verification per
    /// [`BASIC_TTL`], not one per request.
    basic: Mutex<HashMap<String, (Identity, Instant)>>,
}

/// How long a verified basic login is taken without verifying it again.
const BASIC_TTL: Duration = Duration::from_secs(300);
/// Basic logins remembered at most; past it the memory starts over.
const BASIC_MAX: usize = 1024;

/// The name and password of an `Authorization: Basic ...` header.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let encoded = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim_start()
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))?
        .1
        .trim();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let (name, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((name.to_string(), password.to_string()))
}

fn basic_key(name: &str, password: &str) -> String {
    sha256_hex(&format!("{name}\0{password}"))
}

/// What a login attempt came to.
#[derive(Debug)]
pub enum Login {
    Accepted(String, Identity),
    Refused,
    /// Too many failures from this address or for this name: try again after this long.
    Throttled(Duration),
}

/// Failed logins are free up to this many per address and per name; then each further attempt
/// waits, from [`FIRST_WAIT`] doubling up to [`MAX_WAIT`], until a login succeeds.
const FREE_FAILURES: u32 = 5;
const FIRST_WAIT: Duration = Duration::from_secs(1);
const MAX_WAIT: Duration = Duration::from_secs(300);
/// A record untouched this long is forgotten.
const FORGET_AFTER: Duration = Duration::from_secs(3600);
/// Records kept at most: an attacker with many addresses cannot grow the map without bound.
const MAX_RECORDS: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until: Instant,
    last: Instant,
}

/// Failed logins per client address and per user name.
#[derive(Debug, Default)]
struct Throttle {
    records: HashMap<String, Failures>,
}

impl Throttle {
    /// How long `key` must still wait, if it must.
    fn wait(&self, key: &str, now: Instant) -> Option<Duration> {
        self.records
            .get(key)
            .map(|f| f.blocked_until.saturating_duration_since(now))
            .filter(|wait| !wait.is_zero())
    }

    fn failed(&mut self, key: String, now: Instant) {
        if self.records.len() >= MAX_RECORDS && !self.records.contains_key(&key) {
            self.records
                .retain(|_, f| now.saturating_duration_since(f.last) < FORGET_AFTER);
            if self.records.len() >= MAX_RECORDS {
                if let Some(oldest) = self
                    .records
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
                {
                    self.records.remove(&oldest);
                }
            }
        }
        let record = self.records.entry(key).or_insert(Failures {
            count: 0,
            blocked_until: now,
            last: now,
        });
        record.count += 1;
        record.last = now;
        if record.count >= FREE_FAILURES {
            let doublings = (record.count - FREE_FAILURES).min(16);
            let wait = FIRST_WAIT.saturating_mul(1 << doublings).min(MAX_WAIT);
            record.blocked_until = now + wait;
        }
    }

    fn succeeded(&mut self, key: &str) {
        self.records.remove(key);
    }
}

pub fn random_hex(bytes: usize) -> Result<String, WebError> {
    Ok(hex(&random_bytes(bytes)?))
}

fn random_bytes(bytes: usize) -> Result<Vec<u8>, WebError> {
    let mut buffer = vec![0u8; bytes];
    getrandom::getrandom(&mut buffer)
        .map_err(|e| WebError::Internal(format!("the kernel's random source: {e}")))?;
    Ok(buffer)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// An argon2id PHC string for `password`, for `[[web.users]] password_hash`.
pub fn hash_password(password: &str) -> Result<String, WebError> {
    let salt = SaltString::encode_b64(&random_bytes(16)?)
        .map_err(|e| WebError::Internal(format!("salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| WebError::Internal(format!("hashing the password: {e}")))
}

/// Checks a PHC string at config load, so that a typo is found before the first login.
pub fn check_hash(hash: &str) -> Result<(), String> {
    let parsed = PasswordHash::new(hash).map_err(|e| e.to_string())?;
    if !parsed.algorithm.as_str().starts_with("argon2") {
        return Err(format!(
            "{} is not an argon2 hash; make one with `outpost hub user`",
            parsed.algorithm
        ));
    }
    Ok(())
}

impl Auth {
    pub fn new(config: &WebConfig) -> Auth {
        Auth {
            users: config.users.clone(),
            tokens: config.tokens.clone(),
            session_ttl: Duration::from_secs(u64::from(config.session_hours) * 3600),
            sessions: Mutex::new(HashMap::new()),
            throttle: Mutex::new(Throttle::default()),
            decoy_hash: (!config.users.is_empty())
                .then(|| hash_password("not anybody's password").ok())
                .flatten(),
            basic: Mutex::new(HashMap::new()),
        }
    }

    /// Whether anyone must log in: as soon as one user or token is configured.
    pub fn enabled(&self) -> bool {
        !self.users.is_empty() || !self.tokens.is_empty()
    }

    /// The caller, from a bearer token or a session cookie; everyone is an admin when
    /// authentication is off (which the config allows on loopback, or when told to).
    pub fn identify(&self, headers: &HeaderMap) -> Option<Identity> {
        if !self.enabled() {
            return Some(Identity {
                name: "anonymous".into(),
                role: Role::Admin,
            });
        }
        // The scheme is case-insensitive (RFC 9110, 11.1).
        if let Some(token) = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim_start().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token)
        {
            let digest = sha256_hex(token.trim());
            return self
                .tokens
                .iter()
                .find(|t| constant_time_eq(t.sha256.as_bytes(), digest.as_bytes()))
                .map(|t| Identity {
                    name: t.name.clone(),
                    role: t.role,
                });
        }
        if let Some((name, password)) = basic_credentials(headers) {
            return self.basic_cached(&name, &password);
        }
        let session = cookie(headers, SESSION_COOKIE)?;
        let mut sessions = self.sessions.lock().expect("sessions lock");
        let now = Instant::now();
        sessions.retain(|_, (_, expires)| *expires > now);
        sessions.get(session).map(|(identity, _)| identity.clone())
    }

    /// A new session for a user whose password is right. `from` is the client's address, when
    /// known: failures are counted per address and per name, and past [`FREE_FAILURES`] an
    /// attempt is refused without checking the password until the wait is over. Blocking: an
    /// argon2 verification takes milliseconds.
    pub fn login(&self, name: &str, password: &str, from: Option<std::net::IpAddr>) -> Login {
        match self.checked(name, password, from) {
            Login::Accepted(_, identity) => match random_hex(32) {
                Ok(id) => {
                    self.sessions.lock().expect("sessions lock").insert(
                        id.clone(),
                        (identity.clone(), Instant::now() + self.session_ttl),
                    );
                    Login::Accepted(id, identity)
                }
                Err(_) => Login::Refused,
            },
            other => other,
        }
    }

    /// A basic login already verified within [`BASIC_TTL`].
    pub fn basic_cached(&self, name: &str, password: &str) -> Option<Identity> {
        let basic = self.basic.lock().expect("basic lock");
        basic
            .get(&basic_key(name, password))
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(identity, _)| identity.clone())
    }

    /// Verifies a basic login (throttled as a login is) and remembers it for [`BASIC_TTL`].
    /// Blocking: an argon2 verification takes milliseconds.
    pub fn basic_login(&self, name: &str, password: &str, from: Option<std::net::IpAddr>) -> Login {
        let checked = self.checked(name, password, from);
        if let Login::Accepted(_, identity) = &checked {
            let mut basic = self.basic.lock().expect("basic lock");
            let now = Instant::now();
            basic.retain(|_, (_, expires)| *expires > now);
            if basic.len() >= BASIC_MAX {
                basic.clear();
            }
            basic.insert(
                basic_key(name, password),
                (identity.clone(), now + BASIC_TTL),
            );
        }
        checked
    }

    /// The password checked, with failures counted against the address and the name.
    fn checked(&self, name: &str, password: &str, from: Option<std::net::IpAddr>) -> Login {
        // The name as its hash: a record's size must not be the caller's to choose.
        let keys: Vec<String> = from
            .map(|address| format!("address:{address}"))
            .into_iter()
            .chain(std::iter::once(format!("user:{}", sha256_hex(name))))
            .collect();
        let now = Instant::now();
        {
            let throttle = self.throttle.lock().expect("throttle lock");
            if let Some(wait) = keys.iter().filter_map(|k| throttle.wait(k, now)).max() {
                return Login::Throttled(wait);
            }
        }
        match self.verify(name, password) {
            Some(identity) => {
                let mut throttle = self.throttle.lock().expect("throttle lock");
                for key in &keys {
                    throttle.succeeded(key);
                }
                Login::Accepted(String::new(), identity)
            }
            None => {
                let mut throttle = self.throttle.lock().expect("throttle lock");
                for key in keys {
                    throttle.failed(key, now);
                }
                Login::Refused
            }
        }
    }

    fn verify(&self, name: &str, password: &str) -> Option<Identity> {
        let user = self.users.iter().find(|u| u.name == name);
        let stored = user
            .map(|u| u.password_hash.as_str())
            .or(self.decoy_hash.as_deref())?;
        let hash = PasswordHash::new(stored).ok()?;
        let matches = argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        let user = user.filter(|_| matches)?;
        Some(Identity {
            name: user.name.clone(),
            role: user.role,
        })
    }

    pub fn logout(&self, headers: &HeaderMap) {
        if let Some(session) = cookie(headers, SESSION_COOKIE) {
            self.sessions.lock().expect("sessions lock").remove(session);
        }
    }

    pub fn session_ttl(&self) -> Duration {
        self.session_ttl
    }
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Compares without stopping at the first difference, so timing does not tell how much of a
/// guessed token was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WebConfig {
        WebConfig {
            users: vec![crate::User {
                name: "ada".into(),
                role: Role::Admin,
                password_hash: hash_password("correct horse").unwrap(),
            }],
            tokens: vec![crate::Token {
                name: "scraper".into(),
                role: Role::Viewer,
                sha256: sha256_hex("t0ken"),
            }],
            ..WebConfig::default()
        }
    }

    #[test]
    fn each_hash_has_its_own_salt() {
        let (first, second) = (hash_password("pw").unwrap(), hash_password("pw").unwrap());
        assert_ne!(first, second);
        check_hash(&first).unwrap();
        assert_eq!(random_hex(16).unwrap().len(), 32);
    }

    #[test]
    fn passwords_tokens_and_sessions() {
        let config = config();
        check_hash(&config.users[0].password_hash).unwrap();
        assert!(check_hash("plain").is_err());
        let auth = Auth::new(&config);
        assert!(auth.enabled());
        assert!(matches!(auth.login("ada", "wrong", None), Login::Refused));
        assert!(matches!(
            auth.login("bob", "correct horse", None),
            Login::Refused
        ));
        let Login::Accepted(session, identity) = auth.login("ada", "correct horse", None) else {
            panic!("the right password is accepted");
        };
        assert_eq!(identity.role, Role::Admin);
        let mut headers = HeaderMap::new();
        assert!(auth.identify(&headers).is_none());
        headers.insert(
            axum::http::header::COOKIE,
            format!("theme=dark; {SESSION_COOKIE}={session}")
                .parse()
                .unwrap(),
        );
        assert_eq!(auth.identify(&headers).unwrap().name, "ada");
        auth.logout(&headers);
        assert!(auth.identify(&headers).is_none());
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer t0ken".parse().unwrap(),
        );
        assert_eq!(auth.identify(&headers).unwrap().role, Role::Viewer);
        headers.insert(
            axum::http::header::AUTHORIZATION,
            "Bearer t0kem".parse().unwrap(),
        );
        assert!(auth.identify(&headers).is_none());
        // The scheme's case does not matter.
        for scheme in ["bearer", "BEARER", "bEaReR"] {
            headers.insert(
                axum::http::header::AUTHORIZATION,
                format!("{scheme} t0ken").parse().unwrap(),
            );
            assert_eq!(
                auth.identify(&headers).unwrap().role,
                Role::Viewer,
                "{scheme}"
            );
        }
    }

    #[test]
    fn failed_logins_are_free_five_times_then_wait_longer_and_longer() {
        let mut throttle = Throttle::default();
        let start = Instant::now();
        for i in 0..FREE_FAILURES - 1 {
            throttle.failed("user:ada".into(), start);
            assert_eq!(
                throttle.wait("user:ada", start),
                None,
                "failure {i} is free"
            );
        }
        throttle.failed("user:ada".into(), start);
        assert_eq!(throttle.wait("user:ada", start), Some(FIRST_WAIT));
        assert_eq!(throttle.wait("user:bob", start), None, "per name");
        let later = start + FIRST_WAIT;
        assert_eq!(throttle.wait("user:ada", later), None);
        throttle.failed("user:ada".into(), later);
        assert_eq!(throttle.wait("user:ada", later), Some(FIRST_WAIT * 2));
        for _ in 0..40 {
            throttle.failed("user:ada".into(), later);
        }
        assert_eq!(throttle.wait("user:ada", later), Some(MAX_WAIT));
        throttle.succeeded("user:ada");
        assert_eq!(throttle.wait("user:ada", later), None);
        // Many addresses cannot grow it without bound.
        for n in 0..MAX_RECORDS + 100 {
            throttle.failed(format!("address:{n}"), later);
        }
        assert!(throttle.records.len() <= MAX_RECORDS);
    }

    #[test]
    fn a_throttled_login_is_refused_before_its_password_is_checked() {
        let auth = Auth::new(&config());
        let from = Some(std::net::IpAddr::from([192, 0, 2, 7]));
        for _ in 0..FREE_FAILURES {
            assert!(matches!(
                auth.login("mallory", "guess", from),
                Login::Refused
            ));
        }
        // The address is throttled, whatever name it tries, the right password included.
        assert!(matches!(
            auth.login("ada", "correct horse", from),
            Login::Throttled(_)
        ));
        // Another address may still log in as ada.
        let other = Some(std::net::IpAddr::from([192, 0, 2, 8]));
        assert!(matches!(
            auth.login("ada", "correct horse", other),
            Login::Accepted(..)
        ));
    }

    #[test]
    fn without_users_or_tokens_everyone_is_admin() {
        let auth = Auth::new(&WebConfig::default());
        assert!(!auth.enabled());
        assert_eq!(auth.identify(&HeaderMap::new()).unwrap().role, Role::Admin);
    }
}
