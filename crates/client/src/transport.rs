//! The HTTP transport under every upstream stack: one pooled hyper client (HTTP/1.1 keep-alive,
//! no TLS: calls stay inside the platform), and [`Payload`], a body that is either buffered
//! (and so can be retried) or a stream passed through untouched (uploads).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mlmesh_resilience::{BoxError, Replay};

/// A request body.
#[derive(Debug)]
pub enum Payload {
    Full(Full<Bytes>, Bytes),
    Stream(UnsyncBoxBody<Bytes, BoxError>),
}

impl Payload {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self::Full(Full::new(bytes.clone()), bytes)
    }

    pub fn empty() -> Self {
        Self::full(Bytes::new())
    }

    /// A streamed body (not retried).
    pub fn stream<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::Stream(body.map_err(Into::into).boxed_unsync())
    }
}

impl Replay for Payload {
    fn replay(&self) -> Option<Self> {
        match self {
            Self::Full(_, bytes) => Some(Self::full(bytes.clone())),
            Self::Stream(_) => None,
        }
    }
}

impl Body for Payload {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Full(body, _) => Pin::new(body).poll_frame(cx).map_err(|e| match e {}),
            Self::Stream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Full(body, _) => body.is_end_stream(),
            Self::Stream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(body, _) => body.size_hint(),
            Self::Stream(body) => body.size_hint(),
        }
    }
}

/// The pooled client every upstream stack sends through.
pub type Transport = Client<HttpConnector, Payload>;

pub fn transport() -> Transport {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(256)
        .build(connector)
}
