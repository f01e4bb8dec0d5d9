//! One deadline for a call and all its retries. The caller's remaining time arrives as
//! `x-mlmesh-deadline-ms` (milliseconds left); the earlier of it and the upstream's own timeout
//! bounds the call, and what is left is sent on to the replica with each attempt.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request};
use tokio::time::Instant;
use tower::{Layer, Service};

use crate::BoxError;

pub const DEADLINE_HEADER: &str = "x-mlmesh-deadline-ms";

/// The instant by which a request must be answered (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadlineAt(pub Instant);

impl DeadlineAt {
    /// The deadline a caller set with `x-mlmesh-deadline-ms`, if any and well-formed.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let ms: u64 = headers
            .get(DEADLINE_HEADER)?
            .to_str()
            .ok()?
            .trim()
            .parse()
            .ok()?;
        Some(Self(Instant::now() + Duration::from_millis(ms)))
    }
}

/// The call ran out of time.
#[derive(Debug, Clone)]
pub struct DeadlineExceeded {
    pub after: Duration,
}

impl std::fmt::Display for DeadlineExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no answer within {} ms", self.after.as_millis())
    }
}

impl std::error::Error for DeadlineExceeded {}

#[derive(Debug, Clone)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let start = Instant::now();
        let own = start + self.timeout;
        let at = match request.extensions().get::<DeadlineAt>() {
            Some(DeadlineAt(caller)) => (*caller).min(own),
            None => own,
        };
        request.extensions_mut().insert(DeadlineAt(at));
        let call = self.inner.call(request);
        Box::pin(async move {
            match tokio::time::timeout_at(at, call).await {
                Ok(result) => result.map_err(Into::into),
                Err(_) => Err(Box::new(DeadlineExceeded { after: at - start }) as BoxError),
            }
        })
    }
}
