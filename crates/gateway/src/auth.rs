//! API keys: random 256-bit secrets, stored as SHA-256 hashes. A request's key is hashed (a fast
//! hash is right for a high-entropy secret; a slow password hash per request would cost more
//! than the prediction), found by its hash and compared in constant time. Each key has a role
//! and an optional rate limit (GCRA, from governor).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use http::Method;
use mlmesh_protocol::gateway::{KeyInfo, Role};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::db::StoredKey;

/// The id of the key read from `admin.key`.
pub const ADMIN_KEY_ID: &str = "admin";

pub type Hash = [u8; 32];

pub fn hash(key: &str) -> Hash {
    Sha256::digest(key.as_bytes()).into()
}

/// A new key: `mlm_` and 64 hex digits (256 random bits).
pub fn new_secret() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("mlm_{}", hex(&bytes)))
}

pub fn new_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 6];
    getrandom::fill(&mut bytes)?;
    Ok(format!("key_{}", hex(&bytes)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who is calling: what the handlers and usage records need.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: Arc<str>,
    pub role: Role,
}

#[derive(Debug)]
pub struct Entry {
    pub info: KeyInfo,
    hash: Hash,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Calls made with this key, refused ones included (what abuse detection watches).
    attempts: AtomicU64,
}

/// Every key, by hash.
#[derive(Debug, Default)]
pub struct Keys {
    by_hash: RwLock<HashMap<Hash, Arc<Entry>>>,
    /// Bumped by every change made here (not by reloads), so that a reload read before a
    /// change does not undo it.
    generation: AtomicU64,
}

/// Why a key was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Missing,
    Unknown,
    Forbidden(Role, Role),
    RateLimited {
        retry_after_s: u64,
        rate: u32,
        id: String,
    },
}

fn limiter(rate: Option<u32>) -> Option<DefaultDirectRateLimiter> {
    rate.and_then(NonZeroU32::new)
        .map(|r| RateLimiter::direct(Quota::per_second(r)))
}

impl Keys {
    /// The count of local changes so far; pass it to [`Keys::load`] with what was read after.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Replaces the key set with the stored one, read when the generation was `seen`; keys
    /// that stay keep their rate state. Returns false, changing nothing, when a key was added
    /// or removed here since: the read may predate it (the next reload catches up).
    pub fn load(&self, stored: Vec<StoredKey>, seen: u64) -> bool {
        let mut map = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != seen {
            return false;
        }
        let mut next = HashMap::with_capacity(stored.len());
        for key in stored {
            let Ok(hash) = Hash::try_from(key.hash.as_slice()) else {
                continue;
            };
            let entry = match map.remove(&hash) {
                Some(e) if e.info == key.info => e,
                _ => Arc::new(Entry {
                    limiter: limiter(key.info.rate_per_s),
                    info: key.info,
                    hash,
                    attempts: AtomicU64::new(0),
                }),
            };
            next.insert(hash, entry);
        }
        *map = next;
        true
    }

    pub fn insert(&self, stored: &StoredKey) {
        let Ok(hash) = Hash::try_from(stored.hash.as_slice()) else {
            return;
        };
        let entry = Arc::new(Entry {
            limiter: limiter(stored.info.rate_per_s),
            info: stored.info.clone(),
            hash,
            attempts: AtomicU64::new(0),
        });
        let mut map = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        map.insert(hash, entry);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn remove(&self, id: &str) {
        let mut map = self.by_hash.write().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, e| e.info.id != id);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn list(&self) -> Vec<KeyInfo> {
        let mut keys: Vec<KeyInfo> = self
            .by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| e.info.clone())
            .collect();
        keys.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        keys
    }

    /// Every key's attempts so far (refused calls included).
    pub fn attempts(&self) -> Vec<(String, u64)> {
        self.by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|e| (e.info.id.clone(), e.attempts.load(Ordering::Relaxed)))
            .collect()
    }

    /// Checks the bearer token for a call needing `needed`, and takes one unit of its rate.
    pub fn admit(&self, token: Option<&str>, needed: Role) -> Result<Caller, Refusal> {
        let token = token.ok_or(Refusal::Missing)?;
        let digest = hash(token);
        let entry = self
            .by_hash
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&digest)
            .cloned();
        let entry = entry.ok_or(Refusal::Unknown)?;
        if !bool::from(entry.hash.ct_eq(&digest)) {
            return Err(Refusal::Unknown);
        }
        entry.attempts.fetch_add(1, Ordering::Relaxed);
        if !allows(entry.info.role, needed) {
            return Err(Refusal::Forbidden(entry.info.role, needed));
        }
        if let Some(limiter) = &entry.limiter
            && let Err(not_until) = limiter.check()
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Err(Refusal::RateLimited {
                retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                rate: entry.info.rate_per_s.unwrap_or(0),
                id: entry.info.id.clone(),
            });
        }
        Ok(Caller {
            id: Arc::from(entry.info.id.as_str()),
            role: entry.info.role,
        })
    }
}

/// Admin does everything; train does what predict does.
pub fn allows(have: Role, needed: Role) -> bool {
    match needed {
        Role::Admin => have == Role::Admin,
        Role::Train => matches!(have, Role::Admin | Role::Train),
        Role::Predict => true,
    }
}

/// The role a call needs: keys are admin's; reading models and ensembles, inference and one's
/// own usage are predict's; everything else (data, training, imports, defining ensembles) is
/// train's.
pub fn needed(method: &Method, path: &str) -> Role {
    let path = path
        .strip_prefix("/mobile")
        .or_else(|| path.strip_prefix("/web"))
        .unwrap_or(path);
    if path.starts_with("/v1/keys")
        || path.starts_with("/v1/clients")
        || path.starts_with("/v1/throttles")
    {
        return Role::Admin;
    }
    if path.starts_with("/v2") || path == "/v1/usage" || path == "/openapi.json" {
        return Role::Predict;
    }
    let reading = *method == Method::GET || *method == Method::HEAD;
    if reading
        && (path.starts_with("/v1/models")
            || path.starts_with("/v1/ensembles")
            || path == "/v1/algorithms")
    {
        return Role::Predict;
    }
    Role::Train
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(id: &str, secret: &str, role: Role, rate: Option<u32>) -> StoredKey {
        StoredKey {
            info: KeyInfo {
                id: id.into(),
                role,
                rate_per_s: rate,
                name: None,
                created_ms: 0,
            },
            hash: hash(secret).to_vec(),
        }
    }

    #[test]
    fn roles_and_refusals() {
        let keys = Keys::default();
        assert!(keys.load(
            vec![
                stored("a", "sa", Role::Admin, None),
                stored("p", "sp", Role::Predict, Some(2)),
            ],
            keys.generation()
        ));
        assert_eq!(
            keys.admit(None, Role::Predict).unwrap_err(),
            Refusal::Missing
        );
        assert_eq!(
            keys.admit(Some("nope"), Role::Predict).unwrap_err(),
            Refusal::Unknown
        );
        assert_eq!(
            keys.admit(Some("sp"), Role::Train).unwrap_err(),
            Refusal::Forbidden(Role::Predict, Role::Train)
        );
        assert_eq!(&*keys.admit(Some("sa"), Role::Admin).unwrap().id, "a");
        // A rate of 2/s allows a burst of 2, then refuses (the refused check above took none).
        assert!(keys.admit(Some("sp"), Role::Predict).is_ok());
        assert!(keys.admit(Some("sp"), Role::Predict).is_ok());
        assert!(matches!(
            keys.admit(Some("sp"), Role::Predict),
            Err(Refusal::RateLimited {
                retry_after_s: 1,
                rate: 2,
                ..
            })
        ));
        keys.remove("p");
        assert_eq!(
            keys.admit(Some("sp"), Role::Predict).unwrap_err(),
            Refusal::Unknown
        );
    }

    #[test]
    fn a_reload_read_before_a_change_does_not_undo_it() {
        let keys = Keys::default();
        // A reload reads the store (no key yet)…
        let seen = keys.generation();
        let read_before = Vec::new();
        // …a key is created meanwhile…
        keys.insert(&stored("k", "sk", Role::Predict, None));
        // …and the stale read must not remove it.
        assert!(!keys.load(read_before, seen));
        assert!(keys.admit(Some("sk"), Role::Predict).is_ok());
        // A read made after the change applies.
        assert!(keys.load(Vec::new(), keys.generation()));
        assert!(keys.admit(Some("sk"), Role::Predict).is_err());
    }

    #[test]
    fn what_each_call_needs() {
        assert_eq!(needed(&Method::POST, "/v1/keys"), Role::Admin);
        assert_eq!(needed(&Method::POST, "/v2/models/m/infer"), Role::Predict);
        assert_eq!(
            needed(&Method::POST, "/mobile/v2/models/m/infer"),
            Role::Predict
        );
        assert_eq!(needed(&Method::GET, "/v1/models/m"), Role::Predict);
        assert_eq!(needed(&Method::POST, "/v1/models/m/train"), Role::Train);
        assert_eq!(needed(&Method::PUT, "/v1/ensembles/e"), Role::Train);
        assert_eq!(needed(&Method::GET, "/v1/datasets"), Role::Train);
        assert!(new_secret().unwrap().len() == 68);
    }
}
