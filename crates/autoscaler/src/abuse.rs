//! Abuse control: every `abuse_check_ms` the autoscaler reads each gateway replica's calls per
//! key and per client address (`GET /v1/clients`), turns them into rates, and throttles a
//! client whose rate is far above its peers' (at least `abuse_factor` × their median and
//! `abuse_min_rps`), on every gateway replica, for `abuse_throttle_s`. It lifts the throttle
//! once the client's attempts are back under half of `abuse_min_rps` for three checks in a row.
//!
//! A client is judged against its peers of the same kind, and only when at least two peers are
//! active: one busy client alone is load, not abuse (and on one machine every local client
//! shares one address). The admin key is never throttled.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use mlmesh_kit::discovery::Discovery;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

/// Settings of abuse control (from `[autoscaler]`).
#[derive(Debug, Clone, PartialEq)]
pub struct AbuseSettings {
    pub min_rps: f64,
    pub factor: f64,
    pub throttle_s: u64,
    pub check_ms: u64,
}

/// An abuse decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AbuseEvent {
    pub at_ms: i64,
    /// `key` or `addr`.
    pub kind: String,
    pub id: String,
    /// `throttled` or `lifted`.
    pub action: String,
    /// The client's calls per second when decided.
    pub rate_rps: f64,
    /// The median of its active peers.
    pub peers_rps: f64,
    /// The rate it was throttled to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle_rps: Option<u32>,
    /// Gateway replicas that did not take the action, and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ClientList {
    clients: Vec<ClientCount>,
}

#[derive(Debug, Deserialize)]
struct ClientCount {
    kind: String,
    id: String,
    requests: u64,
}

/// The clients' rates from one check: (kind, id) → calls per second.
pub type Rates = BTreeMap<(String, String), f64>;

/// Which clients are abusive among `rates`: (kind, id, rate, peers' median).
pub fn abusive(rates: &Rates, settings: &AbuseSettings) -> Vec<(String, String, f64, f64)> {
    let mut found = Vec::new();
    for ((kind, id), &rate) in rates {
        if kind == "key" && id == "admin" || rate < settings.min_rps {
            continue;
        }
        let mut peers: Vec<f64> = rates
            .iter()
            .filter(|((k, i), r)| k == kind && i != id && **r >= 0.5)
            .map(|(_, r)| *r)
            .collect();
        if peers.len() < 2 {
            continue;
        }
        peers.sort_by(f64::total_cmp);
        let median = peers[peers.len() / 2];
        if rate >= settings.factor * median.max(1.0) {
            found.push((kind.clone(), id.clone(), rate, median));
        }
    }
    found
}

/// State of abuse control between checks.
#[derive(Debug, Default)]
pub struct Abuse {
    pub events: VecDeque<AbuseEvent>,
    /// Throttled clients and how many checks in a row they have been calm.
    pub throttled: BTreeMap<(String, String), (Instant, u32)>,
}

impl Abuse {
    fn push(&mut self, event: AbuseEvent) {
        tracing::warn!(kind = %event.kind, id = %event.id, action = %event.action,
            rate = event.rate_rps, peers = event.peers_rps, "abuse control");
        self.events.push_back(event);
        while self.events.len() > crate::HISTORY {
            self.events.pop_front();
        }
    }
}

/// Watches the gateways and throttles abusive clients until cancelled.
pub async fn watch(
    settings: AbuseSettings,
    key: String,
    discovery: Discovery,
    state: std::sync::Arc<std::sync::Mutex<Abuse>>,
    journal: crate::journal::Journal,
    cancel: tokio_util::sync::CancellationToken,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.check_ms.max(500)))
        .build()
        .unwrap_or_default();
    let mut previous: HashMap<(String, String), u64> = HashMap::new();
    let mut then = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(settings.check_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let gateways: Vec<String> = discovery
            .instances("gateway")
            .into_iter()
            .map(|i| i.url)
            .collect();
        let mut counts: HashMap<(String, String), u64> = HashMap::new();
        for url in &gateways {
            let answer = http
                .get(format!("{url}/v1/clients"))
                .bearer_auth(&key)
                .send()
                .await;
            let Ok(list) = (match answer {
                Ok(a) if a.status().is_success() => a.json::<ClientList>().await,
                _ => continue,
            }) else {
                continue;
            };
            for c in list.clients {
                *counts.entry((c.kind, c.id)).or_default() += c.requests;
            }
        }
        let now = Instant::now();
        let seconds = now.duration_since(then).as_secs_f64().max(1e-3);
        then = now;
        let rates: Rates = counts
            .iter()
            .map(|(client, n)| {
                let before = previous.get(client).copied().unwrap_or(*n);
                let delta = if *n >= before { n - before } else { *n };
                (client.clone(), delta as f64 / seconds)
            })
            .collect();
        previous = counts;
        let at_ms = mlmesh_store::now_ms();
        let mut actions = Vec::new();
        {
            let mut abuse = state.lock().unwrap_or_else(|e| e.into_inner());
            for (kind, id, rate, peers) in abusive(&rates, &settings) {
                let client = (kind.clone(), id.clone());
                let expiring = abuse.throttled.get(&client).is_none_or(|(since, _)| {
                    now.duration_since(*since).as_secs() + 2 >= settings.throttle_s
                });
                if expiring {
                    // (Re)apply: a throttle the gateways are about to drop is renewed.
                    abuse.throttled.insert(client, (now, 0));
                    let throttle = (2.0 * peers).ceil().max(1.0) as u32;
                    actions.push((kind, id, rate, peers, Some(throttle)));
                } else if let Some(entry) = abuse.throttled.get_mut(&client) {
                    entry.1 = 0;
                }
            }
            let calm = settings.min_rps / 2.0;
            let mut lifted = Vec::new();
            for (client, (since, calm_checks)) in abuse.throttled.iter_mut() {
                let rate = rates.get(client).copied().unwrap_or(0.0);
                if now.duration_since(*since).as_secs() >= settings.throttle_s {
                    // Expired on the gateways by itself.
                    lifted.push((client.clone(), rate, false));
                } else if rate < calm {
                    *calm_checks += 1;
                    if *calm_checks >= 3 {
                        lifted.push((client.clone(), rate, true));
                    }
                } else {
                    *calm_checks = 0;
                }
            }
            for (client, rate, now_lift) in lifted {
                abuse.throttled.remove(&client);
                if now_lift {
                    actions.push((client.0, client.1, rate, 0.0, None));
                }
            }
        }
        for (kind, id, rate, peers, throttle) in actions {
            let mut failures = Vec::new();
            for url in &gateways {
                let target = format!("{url}/v1/throttles/{kind}/{id}");
                let request = match throttle {
                    Some(r) => http.put(target).json(&serde_json::json!({
                        "rate_per_s": r,
                        "seconds": settings.throttle_s,
                        "reason": format!("{rate:.0} calls/s against peers' {peers:.0}"),
                    })),
                    None => http.delete(target),
                };
                match request.bearer_auth(&key).send().await {
                    Ok(a) if a.status().is_success() || a.status().as_u16() == 404 => {}
                    Ok(a) => failures.push(format!("{url}: {}", a.status())),
                    Err(e) => failures.push(format!("{url}: {e}")),
                }
            }
            let event = AbuseEvent {
                at_ms,
                kind,
                id,
                action: if throttle.is_some() {
                    "throttled"
                } else {
                    "lifted"
                }
                .into(),
                rate_rps: rate,
                peers_rps: peers,
                throttle_rps: throttle,
                failures,
            };
            let subject = format!("{}:{}", event.kind, event.id);
            journal.record(crate::journal::Kind::Abuse, &subject, &event);
            state.lock().unwrap_or_else(|e| e.into_inner()).push(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> AbuseSettings {
        AbuseSettings {
            min_rps: 50.0,
            factor: 10.0,
            throttle_s: 60,
            check_ms: 1000,
        }
    }

    fn rates(list: &[(&str, &str, f64)]) -> Rates {
        list.iter()
            .map(|(k, i, r)| ((k.to_string(), i.to_string()), *r))
            .collect()
    }

    #[test]
    fn one_client_far_above_its_peers_is_abusive() {
        let r = rates(&[("key", "a", 10.0), ("key", "b", 12.0), ("key", "c", 400.0)]);
        let found = abusive(&r, &settings());
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].1.as_str(), found[0].3), ("c", 12.0));
    }

    #[test]
    fn busy_alone_admin_and_below_the_floor_are_not() {
        // Alone (every local client shares 127.0.0.1): load, not abuse.
        assert!(abusive(&rates(&[("addr", "127.0.0.1", 900.0)]), &settings()).is_empty());
        // The admin key is never throttled.
        let r = rates(&[
            ("key", "a", 1.0),
            ("key", "b", 1.0),
            ("key", "admin", 900.0),
        ]);
        assert!(abusive(&r, &settings()).is_empty());
        // Ten times its peers, but under the floor.
        let r = rates(&[("key", "a", 1.0), ("key", "b", 1.0), ("key", "c", 30.0)]);
        assert!(abusive(&r, &settings()).is_empty());
        // Peers of another kind do not count.
        let r = rates(&[
            ("addr", "10.0.0.1", 1.0),
            ("addr", "10.0.0.2", 1.0),
            ("key", "c", 300.0),
        ]);
        assert!(abusive(&r, &settings()).is_empty());
    }
}
