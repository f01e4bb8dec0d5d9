//! Clients and throttles, for abuse control: the gateway counts calls per client address (per
//! key, the key entry counts them), and applies throttles that the autoscaler (or an admin)
//! sets on a key or an address for a while — a GCRA limit (governor), lifted when it expires
//! or is deleted.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

/// Most distinct addresses counted; calls from further ones are counted under none (they are
/// still served), so a flood of spoofed sources cannot grow the table without bound.
const MAX_ADDRESSES: usize = 10_000;

/// What a throttle applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Key(String),
    Addr(IpAddr),
}

impl Subject {
    pub fn parse(kind: &str, id: &str) -> Result<Self, String> {
        match kind {
            "key" if !id.is_empty() => Ok(Self::Key(id.to_string())),
            "addr" => id
                .parse()
                .map(Self::Addr)
                .map_err(|_| format!("{id:?} is not an IP address")),
            _ => Err(format!(
                "a throttle applies to a `key` (by id) or an `addr` (IP address), not {kind:?}"
            )),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Key(_) => "key",
            Self::Addr(_) => "addr",
        }
    }

    fn id(&self) -> String {
        match self {
            Self::Key(k) => k.clone(),
            Self::Addr(a) => a.to_string(),
        }
    }
}

/// Body of `PUT /v1/throttles/{kind}/{id}`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetThrottle {
    /// Calls per second allowed while throttled (≥ 1).
    pub rate_per_s: u32,
    /// How long the throttle lasts (1 s to a day).
    pub seconds: u64,
    /// Why, shown to the throttled client and in `GET /v1/throttles`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A throttle as listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ThrottleInfo {
    /// `key` or `addr`.
    pub kind: String,
    pub id: String,
    pub rate_per_s: u32,
    /// Milliseconds since the epoch when it lifts.
    pub until_ms: u64,
    pub reason: Option<String>,
}

/// Calls counted per client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClientCount {
    /// `key` or `addr`.
    pub kind: String,
    pub id: String,
    /// Calls so far, refused ones included.
    pub requests: u64,
}

/// Answer of `GET /v1/clients`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClientList {
    pub clients: Vec<ClientCount>,
}

/// Answer of `GET /v1/throttles`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ThrottleList {
    pub throttles: Vec<ThrottleInfo>,
}

struct Throttle {
    limiter: DefaultDirectRateLimiter,
    info: ThrottleInfo,
    until: Instant,
}

/// A throttled call: when to retry and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttled {
    pub retry_after_s: u64,
    pub rate_per_s: u32,
    pub reason: Option<String>,
}

#[derive(Default)]
pub struct Throttles {
    map: RwLock<HashMap<Subject, Throttle>>,
    /// Throttles in force: the request path skips the lock when there are none.
    active: AtomicUsize,
    /// Calls per address. Read-locked with an atomic count per address on the request path
    /// (a write lock only for an address seen the first time); a fast non-cryptographic hash,
    /// as the table is bounded and only counts.
    addresses: RwLock<HashMap<IpAddr, AtomicU64, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for Throttles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttles")
            .field("active", &self.active.load(Ordering::Relaxed))
            .finish()
    }
}

fn epoch_ms(after: Duration) -> u64 {
    (SystemTime::now() + after)
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Throttles {
    /// Counts a call from `addr`.
    pub fn count(&self, addr: IpAddr) {
        if let Some(n) = self
            .addresses
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&addr)
        {
            n.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut map = self.addresses.write().unwrap_or_else(|e| e.into_inner());
        if map.len() < MAX_ADDRESSES || map.contains_key(&addr) {
            map.entry(addr)
                .or_insert_with(|| AtomicU64::new(0))
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn addresses(&self) -> Vec<(String, u64)> {
        self.addresses
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(a, n)| (a.to_string(), n.load(Ordering::Relaxed)))
            .collect()
    }

    pub fn set(&self, subject: Subject, set: &SetThrottle) -> Result<ThrottleInfo, String> {
        let rate = NonZeroU32::new(set.rate_per_s)
            .ok_or("rate_per_s must be at least 1 call per second")?;
        if !(1..=86_400).contains(&set.seconds) {
            return Err(format!(
                "seconds must be between 1 and 86400, not {}",
                set.seconds
            ));
        }
        let length = Duration::from_secs(set.seconds);
        let info = ThrottleInfo {
            kind: subject.kind().into(),
            id: subject.id(),
            rate_per_s: set.rate_per_s,
            until_ms: epoch_ms(length),
            reason: set.reason.clone(),
        };
        let throttle = Throttle {
            limiter: RateLimiter::direct(Quota::per_second(rate)),
            info: info.clone(),
            until: Instant::now() + length,
        };
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        map.insert(subject, throttle);
        self.active.store(map.len(), Ordering::Relaxed);
        Ok(info)
    }

    /// Lifts a throttle; whether there was one.
    pub fn remove(&self, subject: &Subject) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let had = map.remove(subject).is_some();
        self.active.store(map.len(), Ordering::Relaxed);
        had
    }

    /// Drops expired throttles: once none is in force, calls skip the table's lock again.
    pub fn purge(&self) {
        if self.active.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, t| t.until > now);
        self.active.store(map.len(), Ordering::Relaxed);
    }

    /// Throttles in force.
    pub fn list(&self) -> Vec<ThrottleInfo> {
        self.purge();
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<_> = map.values().map(|t| t.info.clone()).collect();
        list.sort_by(|a, b| (&a.kind, &a.id).cmp(&(&b.kind, &b.id)));
        list
    }

    /// Whether a call from `key` at `addr` may go on now.
    pub fn admit(&self, key: Option<&str>, addr: Option<IpAddr>) -> Result<(), Throttled> {
        if self.active.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let subjects = [
            key.map(|k| Subject::Key(k.to_string())),
            addr.map(Subject::Addr),
        ];
        for subject in subjects.into_iter().flatten() {
            let Some(t) = map.get(&subject) else { continue };
            if t.until <= now {
                continue;
            }
            if let Err(not_until) = t.limiter.check() {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                return Err(Throttled {
                    retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
                    rate_per_s: t.info.rate_per_s,
                    reason: t.info.reason.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_limits_its_subject_only_and_lifts() {
        let t = Throttles::default();
        let addr: IpAddr = "10.0.0.7".parse().unwrap();
        assert!(t.admit(Some("k1"), Some(addr)).is_ok());
        let set = SetThrottle {
            rate_per_s: 1,
            seconds: 60,
            reason: Some("flood".into()),
        };
        t.set(Subject::Key("k1".into()), &set).unwrap();
        assert!(
            t.admit(Some("k1"), None).is_ok(),
            "the first call of the second"
        );
        let refused = t.admit(Some("k1"), None).unwrap_err();
        assert_eq!(refused.reason.as_deref(), Some("flood"));
        assert!(refused.retry_after_s >= 1);
        assert!(
            t.admit(Some("k2"), Some(addr)).is_ok(),
            "another key is untouched"
        );
        assert_eq!(t.list().len(), 1);
        assert!(t.remove(&Subject::Key("k1".into())));
        assert!(t.admit(Some("k1"), None).is_ok());
        assert!(t.list().is_empty());
    }

    #[test]
    fn bad_throttles_are_refused() {
        let t = Throttles::default();
        let set = |rate, seconds| SetThrottle {
            rate_per_s: rate,
            seconds,
            reason: None,
        };
        assert!(t.set(Subject::Key("k".into()), &set(0, 5)).is_err());
        assert!(t.set(Subject::Key("k".into()), &set(5, 0)).is_err());
        assert!(t.set(Subject::Key("k".into()), &set(5, 100_000)).is_err());
        assert!(Subject::parse("addr", "not-an-ip").is_err());
        assert!(Subject::parse("user", "x").is_err());
        assert_eq!(
            Subject::parse("addr", "::1").unwrap(),
            Subject::Addr("::1".parse().unwrap())
        );
    }

    #[test]
    fn addresses_are_counted_within_a_bound() {
        let t = Throttles::default();
        t.count("127.0.0.1".parse().unwrap());
        t.count("127.0.0.1".parse().unwrap());
        assert_eq!(t.addresses(), vec![("127.0.0.1".to_string(), 2)]);
    }
}
