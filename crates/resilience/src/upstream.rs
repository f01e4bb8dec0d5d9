//! [`Upstream`]: the whole stack for one upstream service.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use tower::limit::ConcurrencyLimit;
use tower::load_shed::LoadShed;
use tower::retry::Retry;
use tower::{Service, ServiceExt};

use crate::BoxError;
use crate::balance::{Balance, Replica};
use crate::breaker::BreakerConfig;
use crate::deadline::{Deadline, DeadlineLayer};
use crate::retry::{Replay, RetryPolicy, Tried};
use tower::Layer;

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The longest any call may take, retries included (callers may ask for less).
    pub timeout: Duration,
    /// Retries per call at most.
    pub retries: usize,
    /// Retries allowed per call made, over ten seconds.
    pub retry_ratio: f32,
    /// Calls in flight beyond which new calls fail at once (load shedding).
    pub max_in_flight: usize,
    pub breaker: BreakerConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(300),
            retries: 2,
            retry_ratio: 0.2,
            max_in_flight: 4096,
            breaker: BreakerConfig::default(),
        }
    }
}

/// The composed layers (outermost first).
pub type Stack<S> = LoadShed<ConcurrencyLimit<Deadline<Retry<RetryPolicy, Balance<S>>>>>;

/// One upstream service's stack over its replicas; clones share everything.
pub struct Upstream<S> {
    balance: Balance<S>,
    stack: Stack<S>,
}

impl<S> Clone for Upstream<S> {
    fn clone(&self) -> Self {
        Self {
            balance: self.balance.clone(),
            stack: self.stack.clone(),
        }
    }
}

impl<S> std::fmt::Debug for Upstream<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("upstream", &self.balance.upstream())
            .finish()
    }
}

impl<S> Upstream<S> {
    /// A stack for `name` with no replicas yet; `make` builds a replica's transport.
    pub fn new(
        name: &str,
        config: &UpstreamConfig,
        make: impl Fn(&str) -> S + Send + Sync + 'static,
    ) -> Self {
        let balance = Balance::new(name, Arc::new(config.breaker.clone()), make);
        let retry = Retry::new(
            RetryPolicy::new(name, config.retries, config.retry_ratio),
            balance.clone(),
        );
        let deadline = DeadlineLayer::new(config.timeout).layer(retry);
        let stack = LoadShed::new(ConcurrencyLimit::new(deadline, config.max_in_flight));
        Self { balance, stack }
    }

    pub fn set_replicas(&self, urls: &[String]) {
        self.balance.set_replicas(urls);
    }

    pub fn replicas(&self) -> Arc<Vec<Arc<Replica<S>>>> {
        self.balance.replicas()
    }

    pub fn name(&self) -> &str {
        self.balance.upstream()
    }

    /// Sends `request` (path and query only; the balancer picks the replica).
    pub fn call<B, RB>(
        &self,
        mut request: Request<B>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Response<RB>, BoxError>> + Send>>
    where
        S: Service<Request<B>, Response = Response<RB>> + Clone + Send + Sync + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        B: Replay + Send + 'static,
        RB: Send + 'static,
    {
        request.extensions_mut().insert(Tried::default());
        // Boxed here, where the types are concrete: the compiler cannot prove the layered
        // future `Send` at generic call sites (rust-lang/rust#64552).
        Box::pin(self.stack.clone().oneshot(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::breaker::BreakerState;
    use crate::{DeadlineAt, Idempotent, NoReplica};
    use http::{Method, StatusCode};
    use std::sync::Mutex;
    use tokio::time::Instant;

    #[derive(Debug, Clone)]
    struct Body;
    impl Replay for Body {
        fn replay(&self) -> Option<Self> {
            Some(self.clone())
        }
    }

    type Log = Arc<Mutex<Vec<String>>>;

    /// A transport whose replica `down` answers 503, `slow` takes 5 s, the others 200.
    fn upstream(
        config: &UpstreamConfig,
        log: &Log,
    ) -> Upstream<tower::util::BoxCloneSyncService<Request<Body>, Response<String>, BoxError>> {
        let log = Arc::clone(log);
        Upstream::new("model-trees", config, move |url| {
            let url = url.to_string();
            let log = Arc::clone(&log);
            tower::util::BoxCloneSyncService::new(tower::service_fn(
                move |request: Request<Body>| {
                    let url = url.clone();
                    let log = Arc::clone(&log);
                    async move {
                        log.lock()
                            .unwrap()
                            .push(format!("{url} {}", request.uri().path()));
                        let deadline = request
                            .headers()
                            .get(crate::DEADLINE_HEADER)
                            .map(|v| v.to_str().unwrap().to_string());
                        if url.contains(":2") {
                            return Ok::<_, BoxError>(
                                Response::builder().status(503).body(String::new()).unwrap(),
                            );
                        }
                        if url.contains(":3") {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                        }
                        Ok(Response::new(deadline.unwrap_or_default()))
                    }
                },
            ))
        })
    }

    fn request(method: Method, idempotent: bool) -> Request<Body> {
        let mut request = Request::builder()
            .method(method)
            .uri("/v2/models/m/infer")
            .body(Body)
            .unwrap();
        if idempotent {
            request.extensions_mut().insert(Idempotent);
        }
        request
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_idempotent_call_is_retried_on_another_replica() {
        let log = Log::default();
        let up = upstream(&UpstreamConfig::default(), &log);
        up.set_replicas(&["http://127.0.0.1:2".into(), "http://127.0.0.1:1".into()]);
        for _ in 0..20 {
            let response = up.call(request(Method::POST, true)).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
        }
        let log = log.lock().unwrap();
        let retried = log
            .windows(2)
            .filter(|w| {
                w[0].starts_with("http://127.0.0.1:2") && w[1].starts_with("http://127.0.0.1:1")
            })
            .count();
        assert!(retried >= 1, "{log:?}");
        assert!(log.iter().all(|l| l.ends_with("/v2/models/m/infer")));
    }

    #[tokio::test(start_paused = true)]
    async fn a_non_idempotent_call_is_not_retried_and_breakers_open() {
        let log = Log::default();
        let up = upstream(&UpstreamConfig::default(), &log);
        up.set_replicas(&["http://127.0.0.1:2".into()]);
        for _ in 0..10 {
            let response = up.call(request(Method::POST, false)).await.unwrap();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        }
        assert_eq!(log.lock().unwrap().len(), 10, "one attempt each");
        assert_eq!(up.replicas()[0].breaker.state(), BreakerState::Open);
        let err = up.call(request(Method::POST, false)).await.unwrap_err();
        assert!(err.downcast_ref::<NoReplica>().is_some(), "{err}");
        assert_eq!(
            log.lock().unwrap().len(),
            10,
            "an open breaker sends nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_the_call_and_travels_downstream() {
        let log = Log::default();
        let config = UpstreamConfig {
            timeout: Duration::from_secs(2),
            ..UpstreamConfig::default()
        };
        let up = upstream(&config, &log);
        up.set_replicas(&["http://127.0.0.1:1".into()]);
        let mut r = request(Method::GET, false);
        r.extensions_mut()
            .insert(DeadlineAt(Instant::now() + Duration::from_millis(250)));
        let response = up.call(r).await.unwrap();
        assert_eq!(response.body(), "250");
        up.set_replicas(&["http://127.0.0.1:3".into()]);
        let start = Instant::now();
        let err = up.call(request(Method::GET, false)).await.unwrap_err();
        assert!(err.to_string().contains("2000 ms"), "{err}");
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_bound_are_shed() {
        let log = Log::default();
        let config = UpstreamConfig {
            max_in_flight: 2,
            ..UpstreamConfig::default()
        };
        let up = upstream(&config, &log);
        up.set_replicas(&["http://127.0.0.1:3".into()]);
        let a = tokio::spawn({
            let up = up.clone();
            async move { up.call(request(Method::GET, false)).await }
        });
        let b = tokio::spawn({
            let up = up.clone();
            async move { up.call(request(Method::GET, false)).await }
        });
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_millis(1)).await;
        let err = up.call(request(Method::GET, false)).await.unwrap_err();
        assert!(
            err.downcast_ref::<tower::load_shed::error::Overloaded>()
                .is_some(),
            "{err}"
        );
        assert!(a.await.unwrap().is_ok() && b.await.unwrap().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn p2c_prefers_the_faster_replica() {
        let log = Log::default();
        let up = upstream(
            &UpstreamConfig {
                timeout: Duration::from_secs(10),
                ..UpstreamConfig::default()
            },
            &log,
        );
        up.set_replicas(&["http://127.0.0.1:1".into(), "http://127.0.0.1:3".into()]);
        for _ in 0..10 {
            let _ = up.call(request(Method::GET, false)).await;
        }
        let log = log.lock().unwrap();
        let slow = log.iter().filter(|l| l.contains(":3")).count();
        assert!(slow <= 2, "the slow replica got {slow} of 10: {log:?}");
    }
}
