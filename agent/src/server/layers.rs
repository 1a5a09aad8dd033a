//! Cross-cutting work on every call, as tower layers (see `serve` for the
//! stack): each pod's calls admitted within its rate and its number of calls
//! waiting for an answer, before anything else is done for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use crate::identity::peer::Peer;
use crate::limits::{Admission, PeerKey};
use crate::metrics::Metrics;

/// Refuses a call with `RESOURCE_EXHAUSTED` when its pod calls too fast or
/// already has too many calls waiting; holds the pod's place until the answer
/// starts (for a watch: once the stream is open, it counts as a stream).
#[derive(Clone)]
pub struct AdmitCalls {
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
}

impl<S> Layer<S> for AdmitCalls {
    type Service = AdmitCallsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmitCallsService { inner, admit: self.clone() }
    }
}

#[derive(Clone)]
pub struct AdmitCallsService<S> {
    inner: S,
    admit: AdmitCalls,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> Service<http::Request<B>> for AdmitCallsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let key = request.extensions().get::<Peer>().map_or(PeerKey::Unidentified, Peer::key);
        match self.admit.admission.call(&key) {
            Ok(slot) => {
                let answer = self.inner.call(request);
                Box::pin(async move {
                    let response = answer.await;
                    drop(slot);
                    response
                })
            }
            Err(refused) => {
                self.admit.metrics.refused_calls.inc();
                let status = tonic::Status::resource_exhausted(refused.to_string());
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}
