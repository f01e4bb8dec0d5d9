//! The registry's rules, free of HTTP: validation, leases, the change index, eviction.
//! Time comes in as an argument, so tests drive it (and tokio's paused clock drives the sweep).

use std::collections::BTreeMap;
use std::time::Duration;

use mlmesh_protocol::registry::{
    Instance, Lease, Registration, ServiceList, ServiceSummary, Snapshot,
};
use tokio::time::Instant;

use crate::Config;

const MAX_SERVICE_LEN: usize = 64;
const MAX_ID_LEN: usize = 128;
const MAX_URL_LEN: usize = 2048;
const MAX_VERSION_LEN: usize = 64;
const MAX_METADATA_KEYS: usize = 64;
const MAX_METADATA_KEY_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    Invalid(String),
    #[error(
        "no instance {id} of service {service} is registered (it may have been evicted: register again)"
    )]
    UnknownInstance { service: String, id: String },
    #[error(
        "the registry holds its maximum of {0} instances; deregister some or raise registry.max_instances"
    )]
    Full(usize),
}

/// Whether a registration created an entry, changed one, or only renewed its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Updated,
    Renewed,
}

#[derive(Debug)]
struct Entry {
    registration: Registration,
    last_seen: Instant,
}

#[derive(Debug, Default)]
struct ServiceEntry {
    /// Index of the last change to this service's instances; kept after the last instance
    /// leaves, so a watcher of the service sees the removal.
    modify_index: u64,
    instances: BTreeMap<String, Entry>,
}

#[derive(Debug)]
pub struct Registry {
    epoch: String,
    index: u64,
    ttl: Duration,
    max_metadata_bytes: usize,
    max_instances: usize,
    count: usize,
    services: BTreeMap<String, ServiceEntry>,
}

impl Registry {
    pub fn new(config: &Config, epoch: String) -> Self {
        Self {
            epoch,
            index: 0,
            ttl: config.ttl(),
            max_metadata_bytes: config.max_metadata_bytes,
            max_instances: config.max_instances,
            count: 0,
            services: BTreeMap::new(),
        }
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    pub fn index(&self) -> u64 {
        self.index
    }

    /// The change index a watcher of `service` (or of everything) waits on.
    pub fn index_for(&self, service: Option<&str>) -> u64 {
        match service {
            None => self.index,
            Some(name) => self.services.get(name).map_or(0, |s| s.modify_index),
        }
    }

    fn lease(&self) -> Lease {
        Lease {
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            index: self.index,
            epoch: self.epoch.clone(),
        }
    }

    fn bump(&mut self, service: &str) {
        self.index += 1;
        if let Some(entry) = self.services.get_mut(service) {
            entry.modify_index = self.index;
        }
    }

    pub fn register(
        &mut self,
        service: &str,
        id: &str,
        registration: Registration,
        now: Instant,
    ) -> Result<(Outcome, Lease), RegistryError> {
        validate_service(service)?;
        validate_id(id)?;
        validate_registration(&registration, self.max_metadata_bytes)?;
        let existing = self
            .services
            .get_mut(service)
            .and_then(|s| s.instances.get_mut(id));
        let outcome = match existing {
            Some(entry) if entry.registration == registration => {
                entry.last_seen = now;
                Outcome::Renewed
            }
            Some(entry) => {
                entry.registration = registration;
                entry.last_seen = now;
                Outcome::Updated
            }
            None => {
                if self.count >= self.max_instances {
                    return Err(RegistryError::Full(self.max_instances));
                }
                self.count += 1;
                self.services
                    .entry(service.to_string())
                    .or_default()
                    .instances
                    .insert(
                        id.to_string(),
                        Entry {
                            registration,
                            last_seen: now,
                        },
                    );
                Outcome::Created
            }
        };
        if outcome != Outcome::Renewed {
            self.bump(service);
        }
        Ok((outcome, self.lease()))
    }

    /// Renews a lease. An instance the registry does not hold (never registered, evicted, or
    /// registered with a previous run of the registry) gets `UnknownInstance` and must register.
    pub fn heartbeat(
        &mut self,
        service: &str,
        id: &str,
        now: Instant,
    ) -> Result<Lease, RegistryError> {
        let ttl = self.ttl;
        match self
            .services
            .get_mut(service)
            .and_then(|s| s.instances.get_mut(id))
        {
            // An expired lease not yet swept is gone as far as anyone can see: no resurrection.
            Some(entry) if now.duration_since(entry.last_seen) <= ttl => {
                entry.last_seen = now;
                Ok(self.lease())
            }
            _ => Err(RegistryError::UnknownInstance {
                service: service.to_string(),
                id: id.to_string(),
            }),
        }
    }

    pub fn deregister(&mut self, service: &str, id: &str) -> Result<(), RegistryError> {
        let removed = self
            .services
            .get_mut(service)
            .and_then(|s| s.instances.remove(id));
        if removed.is_none() {
            return Err(RegistryError::UnknownInstance {
                service: service.to_string(),
                id: id.to_string(),
            });
        }
        self.count -= 1;
        self.bump(service);
        Ok(())
    }

    /// Removes every instance whose lease expired before `now`; returns what it removed.
    pub fn evict_expired(&mut self, now: Instant) -> Vec<(String, String)> {
        let ttl = self.ttl;
        let mut evicted = Vec::new();
        for (service, entry) in &mut self.services {
            entry.instances.retain(|id, instance| {
                let alive = now.duration_since(instance.last_seen) <= ttl;
                if !alive {
                    evicted.push((service.clone(), id.clone()));
                }
                alive
            });
        }
        for (service, _) in &evicted {
            self.count -= 1;
            self.bump(service);
        }
        evicted
    }

    /// The live instances, of one service or of all, in a stable order.
    pub fn snapshot(&self, service: Option<&str>, now: Instant) -> Snapshot {
        let instances = self
            .services
            .iter()
            .filter(|(name, _)| service.is_none_or(|s| s == name.as_str()))
            .flat_map(|(name, entry)| {
                entry.instances.iter().filter_map(move |(id, instance)| {
                    let age = now.duration_since(instance.last_seen);
                    (age <= self.ttl).then(|| Instance {
                        service: name.clone(),
                        id: id.clone(),
                        url: instance.registration.url.clone(),
                        version: instance.registration.version.clone(),
                        metadata: instance.registration.metadata.clone(),
                        last_seen_ms: u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                    })
                })
            })
            .collect();
        Snapshot {
            epoch: self.epoch.clone(),
            index: self.index,
            instances,
        }
    }

    pub fn services(&self, now: Instant) -> ServiceList {
        let services = self
            .services
            .iter()
            .map(|(name, entry)| ServiceSummary {
                name: name.clone(),
                instances: entry
                    .instances
                    .values()
                    .filter(|i| now.duration_since(i.last_seen) <= self.ttl)
                    .count(),
            })
            .filter(|s| s.instances > 0)
            .collect();
        ServiceList {
            epoch: self.epoch.clone(),
            index: self.index,
            services,
        }
    }
}

/// Service names: `data`, `model:trees`, `gateway` … — lowercase, so routing by name is exact.
pub fn validate_service(name: &str) -> Result<(), RegistryError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.:".contains(c));
    let starts_alnum = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_SERVICE_LEN || !ok_chars || !starts_alnum {
        return Err(RegistryError::Invalid(format!(
            "service name {name:?} is invalid: use 1 to {MAX_SERVICE_LEN} characters of a-z, 0-9, '-', '_', '.', ':', starting with a letter or digit"
        )));
    }
    Ok(())
}

pub fn validate_id(id: &str) -> Result<(), RegistryError> {
    let ok_chars = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if id.is_empty() || id.len() > MAX_ID_LEN || !ok_chars {
        return Err(RegistryError::Invalid(format!(
            "instance id {id:?} is invalid: use 1 to {MAX_ID_LEN} characters of A-Z, a-z, 0-9, '-', '_', '.', ':'"
        )));
    }
    Ok(())
}

fn validate_registration(
    registration: &Registration,
    max_metadata_bytes: usize,
) -> Result<(), RegistryError> {
    validate_url(&registration.url)?;
    if registration.version.len() > MAX_VERSION_LEN {
        return Err(RegistryError::Invalid(format!(
            "version is {} characters long; the limit is {MAX_VERSION_LEN}",
            registration.version.len()
        )));
    }
    if registration.metadata.len() > MAX_METADATA_KEYS {
        return Err(RegistryError::Invalid(format!(
            "metadata has {} keys; the limit is {MAX_METADATA_KEYS}",
            registration.metadata.len()
        )));
    }
    if let Some(key) = registration
        .metadata
        .keys()
        .find(|k| k.is_empty() || k.len() > MAX_METADATA_KEY_LEN)
    {
        return Err(RegistryError::Invalid(format!(
            "metadata key {key:?} is invalid: keys must be 1 to {MAX_METADATA_KEY_LEN} characters"
        )));
    }
    let size = serde_json::to_vec(&registration.metadata).map_or(usize::MAX, |v| v.len());
    if size > max_metadata_bytes {
        return Err(RegistryError::Invalid(format!(
            "metadata is {size} bytes as JSON; the limit is {max_metadata_bytes} (registry.max_metadata_bytes)"
        )));
    }
    Ok(())
}

/// An instance URL must be an absolute `http`/`https` URL with a host, and nothing after the
/// path: clients append API paths to it.
pub fn validate_url(url: &str) -> Result<(), RegistryError> {
    let invalid = |why: &str| {
        Err(RegistryError::Invalid(format!(
            "url {url:?} is invalid: {why}; give a base URL such as http://127.0.0.1:8080"
        )))
    };
    if url.is_empty() || url.len() > MAX_URL_LEN {
        return invalid("it must be 1 to 2048 characters");
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return invalid("it does not parse");
    };
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return invalid("the scheme must be http or https");
    }
    match uri.authority() {
        Some(authority) if !authority.host().is_empty() => {}
        _ => return invalid("it has no host"),
    }
    if uri.query().is_some() || url.contains('#') {
        return invalid("it must not have a query or fragment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(ttl_ms: u64) -> Registry {
        Registry::new(
            &Config {
                ttl_ms,
                max_instances: 3,
                ..Config::default()
            },
            "e1".into(),
        )
    }

    fn reg(url: &str) -> Registration {
        Registration {
            url: url.into(),
            version: "0.1.0".into(),
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn register_renew_update_and_index() {
        let mut r = registry(1000);
        let t0 = Instant::now();
        let (o, lease) = r
            .register("data", "d1", reg("http://127.0.0.1:1"), t0)
            .unwrap();
        assert_eq!((o, lease.index, lease.ttl_ms), (Outcome::Created, 1, 1000));
        let (o, lease) = r
            .register("data", "d1", reg("http://127.0.0.1:1"), t0)
            .unwrap();
        assert_eq!((o, lease.index), (Outcome::Renewed, 1));
        let (o, lease) = r
            .register("data", "d1", reg("http://127.0.0.1:2"), t0)
            .unwrap();
        assert_eq!((o, lease.index), (Outcome::Updated, 2));
        assert_eq!(r.index_for(Some("data")), 2);
        assert_eq!(r.index_for(Some("other")), 0);
        let snap = r.snapshot(Some("data"), t0);
        assert_eq!(snap.instances.len(), 1);
        assert_eq!(snap.instances[0].url, "http://127.0.0.1:2");
    }

    #[test]
    fn expiry_hides_then_evicts_and_heartbeat_cannot_resurrect() {
        let mut r = registry(1000);
        let t0 = Instant::now();
        r.register("data", "d1", reg("http://h:1"), t0).unwrap();
        r.register("data", "d2", reg("http://h:2"), t0).unwrap();
        r.heartbeat("data", "d2", t0 + Duration::from_millis(900))
            .unwrap();
        let t1 = t0 + Duration::from_millis(1500);
        // Expired but not yet swept: invisible, and its heartbeat is refused.
        assert_eq!(r.snapshot(None, t1).instances.len(), 1);
        assert!(matches!(
            r.heartbeat("data", "d1", t1),
            Err(RegistryError::UnknownInstance { .. })
        ));
        let before = r.index();
        assert_eq!(r.evict_expired(t1), vec![("data".into(), "d1".into())]);
        assert_eq!(r.index(), before + 1);
        assert_eq!(r.services(t1).services[0].instances, 1);
        assert!(r.evict_expired(t1).is_empty());
    }

    #[test]
    fn deregister_and_capacity() {
        let mut r = registry(1000);
        let t0 = Instant::now();
        for i in 0..3 {
            r.register("m", &format!("i{i}"), reg("http://h:1"), t0)
                .unwrap();
        }
        assert_eq!(
            r.register("m", "i3", reg("http://h:1"), t0).unwrap_err(),
            RegistryError::Full(3)
        );
        r.deregister("m", "i0").unwrap();
        assert!(r.deregister("m", "i0").is_err());
        r.register("m", "i3", reg("http://h:1"), t0).unwrap();
    }

    #[test]
    fn rejects_bad_input_without_change() {
        let mut r = registry(1000);
        let t0 = Instant::now();
        let bad_names = ["", "Data", "-x", "a/b", &"x".repeat(65)];
        for name in bad_names {
            assert!(
                r.register(name, "i", reg("http://h:1"), t0).is_err(),
                "{name}"
            );
        }
        for id in ["", "a b", "a/b", &"i".repeat(129)] {
            assert!(r.register("s", id, reg("http://h:1"), t0).is_err(), "{id}");
        }
        for url in [
            "",
            "127.0.0.1:80",
            "ftp://h",
            "http://",
            "http://h:1/?q=1",
            "not a url",
        ] {
            assert!(r.register("s", "i", reg(url), t0).is_err(), "{url}");
        }
        let mut big = reg("http://h:1");
        big.metadata.insert(
            "models".into(),
            serde_json::Value::String("m".repeat(70_000)),
        );
        assert!(r.register("s", "i", big, t0).is_err());
        assert_eq!(r.index(), 0);
        assert!(r.snapshot(None, t0).instances.is_empty());
    }

    #[test]
    fn accepts_realistic_names() {
        for name in ["registry", "model:trees", "data", "gateway-2"] {
            validate_service(name).unwrap();
        }
        for url in ["http://127.0.0.1:8080", "https://models.example.com/base"] {
            validate_url(url).unwrap();
        }
    }
}
