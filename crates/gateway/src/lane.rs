//! The inference lane: `POST /v2/models/{name}/infer`, the gateway's hottest route, goes through
//! the same envelope (request id, span, panic guard, metrics), key check and handler as it would
//! through the router, but without axum's routing and per-route middleware stack, which cost
//! ≈ 10 % of the gateway's CPU per proxied request (`perf`, BENCHMARKS.md). Every other request
//! goes to the router unchanged.

use std::convert::Infallible;
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, Either};
use mlmesh_kit::Envelope;
use tower::Service;

use crate::routes;
use crate::state::AppState;

/// The route template the lane's requests are counted under, as the router would.
pub const INFER_ROUTE: &str = "/v2/models/{name}/infer";

/// The gateway's outermost service: the lane, else the router.
#[derive(Clone)]
pub struct Lane {
    pub state: AppState,
    pub envelope: Envelope,
    pub router: Router,
}

impl Service<Request> for Lane {
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        BoxFuture<'static, Result<Response, Infallible>>,
        <Router as Service<Request>>::Future,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let Some(name) = model_of(&request) else {
            return Either::Right(self.router.call(request));
        };
        let (state, envelope) = (self.state.clone(), self.envelope.clone());
        Either::Left(Box::pin(async move {
            let answer = envelope.run(INFER_ROUTE, request, |request| async move {
                match routes::admit(&state, &request) {
                    Ok(caller) => routes::infer(state, caller, name, None, None, request).await,
                    Err(refused) => refused.into_response(),
                }
            });
            Ok(answer.await)
        }))
    }
}

/// The model named by a `POST /v2/models/{name}/infer`. Names that would need decoding (or
/// anything unusual) take the router, whose extractors decode them.
fn model_of(request: &Request) -> Option<String> {
    if request.method() != Method::POST {
        return None;
    }
    let name = request
        .uri()
        .path()
        .strip_prefix("/v2/models/")?
        .strip_suffix("/infer")?;
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    plain.then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, uri: &str) -> Request {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn only_plain_latest_version_inference_takes_the_lane() {
        let name = |m, u| model_of(&request(m, u));
        assert_eq!(
            name(Method::POST, "/v2/models/bc-rf/infer").as_deref(),
            Some("bc-rf")
        );
        assert_eq!(
            name(Method::POST, "/v2/models/a.b_c/infer?x=1").as_deref(),
            Some("a.b_c")
        );
        for (method, uri) in [
            (Method::GET, "/v2/models/bc-rf/infer"),
            (Method::POST, "/v2/models/bc-rf/versions/2/infer"),
            (Method::POST, "/mobile/v2/models/bc-rf/infer"),
            (Method::POST, "/v2/models//infer"),
            (Method::POST, "/v2/models/b%20c/infer"),
            (Method::POST, "/v2/models/bc-rf/ready"),
        ] {
            assert_eq!(name(method.clone(), uri), None, "{method} {uri}");
        }
    }
}
