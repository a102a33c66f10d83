//! Basic authentication against the bcrypt hashes of `basic_auth_users`.
//!
//! bcrypt is slow by design (~70 ms at cost 10), so, as the toolkit does,
//! each verdict is cached: a scrape every second costs one bcrypt, once.
//! The cache is keyed by an HMAC of the credentials under a key made at
//! start, so it holds no password, and its lookups' timing tells nothing
//! about one. Unknown users cost a bcrypt too, so timing does not tell
//! which users exist.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    str::FromStr as _,
    sync::Mutex,
};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use hyper::header::HeaderValue;
use ring::{hmac, rand::SystemRandom};
use subtle::ConstantTimeEq as _;
use tokio::sync::Semaphore;

/// Wrong credentials remembered; past this the set starts over, so a
/// guesser can grow memory only this far.
const DENIED_CACHED: usize = 1024;

pub struct Users {
    /// (name, bcrypt hash), in the file's order.
    users: Vec<(String, String)>,
    key: hmac::Key,
    cache: Mutex<Cache>,
    /// One bcrypt at a time: a flood of guesses costs one core at most.
    bcrypt: Semaphore,
}

#[derive(Default)]
struct Cache {
    allowed: HashSet<[u8; 32]>,
    denied: HashSet<[u8; 32]>,
}

/// Why a request was not let in (its client is told 401 and no more).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    NoCredentials,
    Malformed,
    UnknownUser,
    WrongPassword(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoCredentials => f.write_str("no credentials (basic authentication is required)"),
            Self::Malformed => f.write_str("a malformed Authorization header"),
            Self::UnknownUser => f.write_str("an unknown user"),
            Self::WrongPassword(user) => write!(f, "a wrong password for user {user:?}"),
        }
    }
}

impl Users {
    /// Checks every hash now, so a bad one fails at start.
    pub fn new(users: BTreeMap<String, String>) -> anyhow::Result<Self> {
        for (name, hash) in &users {
            if name.contains(':') {
                bail!("user {name:?}: a user name cannot contain ':'");
            }
            let parts = bcrypt::HashParts::from_str(hash).map_err(|e| {
                anyhow::anyhow!(
                    "user {name:?}: not a bcrypt hash such as htpasswd -nBC 10 makes ({e})"
                )
            })?;
            if !(4..=31).contains(&parts.get_cost()) {
                bail!(
                    "user {name:?}: bcrypt cost {} is outside 4..31",
                    parts.get_cost()
                );
            }
        }
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new())
            .ok()
            .context("no randomness for the credentials cache's key")?;
        Ok(Self {
            users: users.into_iter().collect(),
            key,
            cache: Mutex::new(Cache::default()),
            bcrypt: Semaphore::new(1),
        })
    }

    /// Lets the request in, or says why not.
    pub async fn check(&self, header: Option<&HeaderValue>) -> Result<(), Refusal> {
        let header = header.ok_or(Refusal::NoCredentials)?;
        let (user, pass) = decode(header.as_bytes()).ok_or(Refusal::Malformed)?;
        let index = self.find(&user);
        let tag = self.tag(&user, &pass);
        let allowed = match self.cached(&tag) {
            Some(allowed) => allowed,
            None => {
                // A closed semaphore cannot happen (it is never closed).
                let _one = self.bcrypt.acquire().await.ok();
                match self.cached(&tag) {
                    Some(allowed) => allowed,
                    None => self.verify(index, pass, tag).await,
                }
            }
        };
        match index {
            Some(_) if allowed => Ok(()),
            Some(i) => Err(Refusal::WrongPassword(self.users[i].0.clone())),
            None => Err(Refusal::UnknownUser),
        }
    }

    /// Runs bcrypt off the server's thread and caches the verdict.
    async fn verify(&self, index: Option<usize>, pass: Vec<u8>, tag: [u8; 32]) -> bool {
        // An unknown user is checked against a real hash, for the same cost.
        let hash = self.users[index.unwrap_or(0)].1.clone();
        let matched =
            tokio::task::spawn_blocking(move || bcrypt::verify(pass, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        let allowed = matched && index.is_some();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if allowed {
            cache.allowed.insert(tag);
        } else {
            if cache.denied.len() >= DENIED_CACHED {
                cache.denied.clear();
            }
            cache.denied.insert(tag);
        }
        allowed
    }

    fn cached(&self, tag: &[u8; 32]) -> Option<bool> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.allowed.contains(tag) {
            Some(true)
        } else if cache.denied.contains(tag) {
            Some(false)
        } else {
            None
        }
    }

    /// The user's index, comparing every name in constant time.
    fn find(&self, name: &[u8]) -> Option<usize> {
        let mut found = None;
        for (i, (user, _)) in self.users.iter().enumerate() {
            if bool::from(user.as_bytes().ct_eq(name)) {
                found = Some(i);
            }
        }
        found
    }

    fn tag(&self, user: &[u8], pass: &[u8]) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(&(user.len() as u64).to_le_bytes());
        ctx.update(user);
        ctx.update(pass);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }
}

/// `Basic base64(user:password)`, as bytes (neither need be UTF-8).
fn decode(header: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(rest.trim())
        .ok()?;
    let colon = raw.iter().position(|&b| b == b':')?;
    Some((raw[..colon].to_vec(), raw[colon + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn basic(user: &str, pass: &str) -> HeaderValue {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        HeaderValue::from_str(&format!("Basic {b64}")).unwrap()
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn verdicts_and_their_reasons() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let users = Users::new([("prom".to_owned(), hash)].into()).unwrap();
        block_on(async {
            assert_eq!(users.check(Some(&basic("prom", "s3cret"))).await, Ok(()));
            assert_eq!(
                users.check(Some(&basic("prom", "nope"))).await,
                Err(Refusal::WrongPassword("prom".into()))
            );
            assert_eq!(
                users.check(Some(&basic("root", "s3cret"))).await,
                Err(Refusal::UnknownUser)
            );
            assert_eq!(users.check(None).await, Err(Refusal::NoCredentials));
            let bearer = HeaderValue::from_static("Bearer abc");
            assert_eq!(users.check(Some(&bearer)).await, Err(Refusal::Malformed));
        });
    }

    #[test]
    fn a_repeated_scrape_costs_one_bcrypt() {
        // Cost 12 takes ~250 ms: a second check that took as long was not cached.
        let hash = bcrypt::hash("pw", 12).unwrap();
        let users = Users::new([("p".to_owned(), hash)].into()).unwrap();
        block_on(async {
            let t = Instant::now();
            users.check(Some(&basic("p", "pw"))).await.unwrap();
            let first = t.elapsed();
            let t = Instant::now();
            for _ in 0..100 {
                users.check(Some(&basic("p", "pw"))).await.unwrap();
            }
            assert!(
                t.elapsed() < first / 4,
                "{first:?} then {:?} for 100",
                t.elapsed()
            );
            assert!(first > Duration::from_millis(20), "{first:?}");
        });
    }

    #[test]
    fn bad_hashes_are_refused_at_load() {
        for hash in [
            "plaintext",
            "$2y$99$L6Bc/AlTQHyd9liGgGEZyOFLPHNgyxeEPfgYfBCVxJ7JIlwxyVU3u",
            "",
        ] {
            let e = Users::new([("u".to_owned(), hash.to_owned())].into())
                .err()
                .unwrap();
            assert!(e.to_string().contains("user \"u\""), "{e}");
        }
        let e = Users::new([("a:b".to_owned(), bcrypt::hash("x", 4).unwrap())].into());
        assert!(e.is_err());
    }
}
