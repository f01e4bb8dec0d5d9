//! Power of two choices over one upstream's replicas: of two replicas picked at random among
//! those whose breaker admits calls (and not yet tried by this request), the one with the
//! lower peak-EWMA cost (latency estimate × calls in flight) gets the call. Each replica's
//! breaker and latency meter wrap its transport; the replica set follows discovery.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use tokio::time::Instant;
use tower::Service;

use crate::BoxError;
use crate::breaker::{Breaker, BreakerConfig};
use crate::deadline::{DEADLINE_HEADER, DeadlineAt};
use crate::retry::Tried;

/// How fast the latency estimate forgets: an old sample weighs 1/e after this long.
const DECAY: Duration = Duration::from_secs(10);
/// The estimate of a replica with no calls yet.
const INITIAL_RTT: Duration = Duration::from_millis(1);

/// No replica can take the call.
#[derive(Debug, Clone)]
pub struct NoReplica {
    pub upstream: String,
    pub reason: String,
}

impl std::fmt::Display for NoReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.upstream, self.reason)
    }
}

impl std::error::Error for NoReplica {}

/// Peak-EWMA latency: jumps up to a slower sample at once, decays towards faster ones.
#[derive(Debug)]
struct Meter {
    estimate_ns: f64,
    stamp: Instant,
}

/// One replica: its base URL, breaker, latency meter and transport.
#[derive(Debug)]
pub struct Replica<S> {
    pub url: Arc<str>,
    scheme: Scheme,
    authority: Authority,
    prefix: String,
    pub breaker: Breaker,
    meter: Mutex<Meter>,
    pending: AtomicUsize,
    service: S,
}

impl<S> Replica<S> {
    fn cost(&self) -> f64 {
        let meter = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        meter.estimate_ns * (self.pending.load(Ordering::Relaxed) + 1) as f64
    }

    fn observe(&self, rtt: Duration) {
        let mut meter = self.meter.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let rtt = rtt.as_nanos() as f64;
        if rtt > meter.estimate_ns {
            meter.estimate_ns = rtt;
        } else {
            let elapsed = now.saturating_duration_since(meter.stamp).as_secs_f64();
            let w = (-elapsed / DECAY.as_secs_f64()).exp();
            meter.estimate_ns = meter.estimate_ns * w + rtt * (1.0 - w);
        }
        meter.stamp = now;
    }
}

struct Shared<S> {
    upstream: String,
    breaker: Arc<BreakerConfig>,
    replicas: RwLock<Arc<Vec<Arc<Replica<S>>>>>,
    seed: AtomicU64,
    make: Box<dyn Fn(&str) -> S + Send + Sync>,
}

/// The balancer; clones share replicas, breakers and meters.
pub struct Balance<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Balance<S> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> std::fmt::Debug for Balance<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balance")
            .field("upstream", &self.shared.upstream)
            .finish()
    }
}

fn split(url: &str) -> Result<(Scheme, Authority, String), String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| format!("{url:?} has no scheme"))?;
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let prefix = uri.path().trim_end_matches('/').to_string();
    Ok((scheme, authority, prefix))
}

impl<S> Balance<S> {
    /// A balancer for `upstream`; `make` builds the transport of a new replica from its URL.
    pub fn new(
        upstream: &str,
        breaker: Arc<BreakerConfig>,
        make: impl Fn(&str) -> S + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                upstream: upstream.to_string(),
                breaker,
                replicas: RwLock::new(Arc::new(Vec::new())),
                seed: AtomicU64::new(0x9E37_79B9_7F4A_7C15),
                make: Box::new(make),
            }),
        }
    }

    /// Replaces the replica set; replicas that stay keep their breaker and latency history.
    /// URLs that do not parse are skipped (and logged).
    pub fn set_replicas(&self, urls: &[String]) {
        let current = self.replicas();
        let by_url: HashMap<&str, &Arc<Replica<S>>> =
            current.iter().map(|r| (&*r.url, r)).collect();
        let mut next = Vec::with_capacity(urls.len());
        for url in urls {
            if let Some(existing) = by_url.get(url.as_str()) {
                next.push(Arc::clone(existing));
                continue;
            }
            match split(url) {
                Ok((scheme, authority, prefix)) => next.push(Arc::new(Replica {
                    url: Arc::from(url.as_str()),
                    scheme,
                    authority,
                    prefix,
                    breaker: Breaker::new(
                        Arc::clone(&self.shared.breaker),
                        &self.shared.upstream,
                        url,
                    ),
                    meter: Mutex::new(Meter {
                        estimate_ns: INITIAL_RTT.as_nanos() as f64,
                        stamp: Instant::now(),
                    }),
                    pending: AtomicUsize::new(0),
                    service: (self.shared.make)(url),
                })),
                Err(e) => {
                    tracing::warn!(upstream = %self.shared.upstream, error = %e, "replica skipped")
                }
            }
        }
        *self
            .shared
            .replicas
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
    }

    pub fn replicas(&self) -> Arc<Vec<Arc<Replica<S>>>> {
        Arc::clone(
            &self
                .shared
                .replicas
                .read()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// A cheap pseudo-random number (splitmix64): choosing replicas needs speed, not quality.
    fn random(&self) -> u64 {
        let mut z = self
            .shared
            .seed
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn pick(&self, tried: &[Arc<str>]) -> Result<Arc<Replica<S>>, NoReplica> {
        let replicas = self.replicas();
        if replicas.is_empty() {
            return Err(NoReplica {
                upstream: self.shared.upstream.clone(),
                reason: "no replica is registered".into(),
            });
        }
        let healthy: Vec<&Arc<Replica<S>>> = replicas
            .iter()
            .filter(|r| r.breaker.would_admit())
            .collect();
        let fresh: Vec<&Arc<Replica<S>>> = healthy
            .iter()
            .copied()
            .filter(|r| !tried.iter().any(|t| *t == r.url))
            .collect();
        let candidates = if fresh.is_empty() { healthy } else { fresh };
        let chosen = match candidates.len() {
            0 => {
                return Err(NoReplica {
                    upstream: self.shared.upstream.clone(),
                    reason: format!(
                        "the circuit breakers of all {} replicas are open",
                        replicas.len()
                    ),
                });
            }
            1 => candidates[0],
            n => {
                let r = self.random();
                let a = (r % n as u64) as usize;
                let b = (a + 1 + ((r >> 32) % (n as u64 - 1)) as usize) % n;
                if candidates[a].cost() <= candidates[b].cost() {
                    candidates[a]
                } else {
                    candidates[b]
                }
            }
        };
        Ok(Arc::clone(chosen))
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Balance<S>
where
    S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Response<RB>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is decided per call: a replica is chosen only when the request is known.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let tried = request.extensions().get::<Tried>().cloned();
        let picked = {
            let before = tried.as_ref().map(Tried::urls).unwrap_or_default();
            self.pick(&before)
        };
        let replica = match picked {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(e.into()) }),
        };
        if let Err(open) = replica.breaker.admit() {
            return Box::pin(async move { Err(open.into()) });
        }
        if let Some(tried) = &tried {
            tried.push(Arc::clone(&replica.url));
        }
        // Address the chosen replica; the request carries only path and query.
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", PathAndQuery::as_str);
        let full = format!("{}{}", replica.prefix, path);
        let uri = Uri::builder()
            .scheme(replica.scheme.clone())
            .authority(replica.authority.clone())
            .path_and_query(full)
            .build();
        match uri {
            Ok(uri) => *request.uri_mut() = uri,
            Err(e) => return Box::pin(async move { Err(Box::new(e) as BoxError) }),
        }
        if let Some(DeadlineAt(at)) = request.extensions().get::<DeadlineAt>().copied() {
            let left = at
                .saturating_duration_since(Instant::now())
                .as_millis()
                .max(1);
            if let Ok(value) = HeaderValue::from_str(&left.to_string()) {
                request.headers_mut().insert(DEADLINE_HEADER, value);
            }
        }
        let mut service = replica.service.clone();
        replica.pending.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        Box::pin(async move {
            let result = service.call(request).await.map_err(Into::into);
            let elapsed = start.elapsed();
            replica.pending.fetch_sub(1, Ordering::Relaxed);
            replica.observe(elapsed);
            let ok = match &result {
                Ok(response) => !crate::retry::replica_fault(response.status()),
                Err(_) => false,
            };
            replica.breaker.record(ok, elapsed);
            result
        })
    }
}
