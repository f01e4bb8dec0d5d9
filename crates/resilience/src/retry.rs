//! Retries: only for calls that are safe to repeat (reads, and requests marked [`Idempotent`],
//! such as inference), only when the replica was at fault (no answer, 5xx, 429), paid from a
//! budget so that retries cannot multiply load in an outage, and sent to another replica.

use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use tower::retry::Policy;
use tower::retry::budget::{Budget, TpsBudget};

/// A request body that can be sent again (a buffered body), or not (a stream).
pub trait Replay: Sized {
    fn replay(&self) -> Option<Self>;
}

/// Marks a request as safe to repeat although its method is not (e.g. `POST …/infer`).
#[derive(Debug, Clone, Copy)]
pub struct Idempotent;

/// The replicas a request has been sent to, shared by its attempts.
#[derive(Debug, Clone, Default)]
pub struct Tried(Arc<Mutex<Vec<Arc<str>>>>);

impl Tried {
    pub fn urls(&self) -> Vec<Arc<str>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    pub fn push(&self, url: Arc<str>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(url);
    }
}

/// Whether a status means the replica (not the caller) failed.
pub fn replica_fault(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

#[derive(Clone)]
pub struct RetryPolicy {
    budget: Arc<TpsBudget>,
    attempts_left: usize,
    upstream: Arc<str>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("attempts_left", &self.attempts_left)
            .finish()
    }
}

impl RetryPolicy {
    /// At most `retries` retries per call, from a budget of `ratio` retries per call made
    /// (plus a floor of a few per second), like Finagle's.
    pub fn new(upstream: &str, retries: usize, ratio: f32) -> Self {
        Self {
            budget: Arc::new(TpsBudget::new(std::time::Duration::from_secs(10), 5, ratio)),
            attempts_left: retries,
            upstream: Arc::from(upstream),
        }
    }
}

fn repeatable<B>(request: &Request<B>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || request.extensions().get::<Idempotent>().is_some()
}

impl<B: Replay, RB, E> Policy<Request<B>, Response<RB>, E> for RetryPolicy {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _request: &mut Request<B>,
        result: &mut Result<Response<RB>, E>,
    ) -> Option<Self::Future> {
        let failed = match result {
            Ok(response) => replica_fault(response.status()),
            Err(_) => true,
        };
        if !failed {
            self.budget.deposit();
            return None;
        }
        if self.attempts_left == 0 || !self.budget.withdraw() {
            return None;
        }
        self.attempts_left -= 1;
        metrics::counter!("mlmesh_upstream_retries_total", "upstream" => self.upstream.to_string())
            .increment(1);
        Some(std::future::ready(()))
    }

    fn clone_request(&mut self, request: &Request<B>) -> Option<Request<B>> {
        if !repeatable(request) {
            return None;
        }
        let body = request.body().replay()?;
        let mut copy = Request::new(body);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }
}
