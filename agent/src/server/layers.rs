//! Cross-cutting work on every call, as tower layers (see `serve` for the
//! stack): every call timed by method and status code; each pod's calls
//! admitted within its rate and its number of calls waiting for an answer,
//! before anything else is done for them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;
use tower::{Layer, Service};
use vaultlet_client::code_name;

use crate::identity::peer::Peer;
use crate::limits::{Admission, PeerKey};
use crate::metrics::{CallLabels, Histograms, Metrics};

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

/// The methods served, by path, with the name they carry in the `method`
/// label; any other path is `other`: a label never takes a value a caller
/// chose, so a caller cannot make the agent create series.
const METHODS: [(&str, &str); 6] = [
    ("/vaultlet.v1.Secrets/GetSecrets", "GetSecrets"),
    ("/vaultlet.v1.Secrets/WatchSecrets", "WatchSecrets"),
    ("/grpc.health.v1.Health/Check", "Health/Check"),
    ("/grpc.health.v1.Health/Watch", "Health/Watch"),
    ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", "ServerReflectionInfo"),
    ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", "ServerReflectionInfo"),
];
const OTHER: usize = METHODS.len();
/// gRPC status codes are 0 to 16.
const CODES: usize = 17;

/// Times every call, by method and status code, until its answer starts: the
/// code is the answer's `grpc-status` header (a refusal comes as trailers
/// only), and a call whose answer starts without one is `OK` (a stream's own
/// end comes later, in its trailers). A call dropped before it answers (its
/// deadline passed, its client went away) is `CANCELLED`, as its client hears.
#[derive(Clone)]
pub struct TimeCalls {
    histograms: Arc<CallHistograms>,
}

/// Each (method, code) histogram looked up in the family once, on first use:
/// a call then costs no label lookup.
struct CallHistograms {
    family: Histograms<CallLabels>,
    resolved: [[OnceLock<Histogram>; CODES]; OTHER + 1],
}

impl TimeCalls {
    pub fn new(metrics: &Metrics) -> TimeCalls {
        let resolved = std::array::from_fn(|_| std::array::from_fn(|_| OnceLock::new()));
        TimeCalls { histograms: Arc::new(CallHistograms { family: metrics.latency.calls.clone(), resolved }) }
    }
}

impl CallHistograms {
    fn observe(&self, method: usize, code: tonic::Code, started: Instant) {
        let histogram = self.resolved[method][code as usize].get_or_init(|| {
            let method = METHODS.get(method).map_or("other", |(_, name)| name);
            self.family.get_or_create_owned(&CallLabels { method, code: code_name(code) })
        });
        histogram.observe(started.elapsed().as_secs_f64());
    }
}

impl<S> Layer<S> for TimeCalls {
    type Service = TimeCallsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TimeCallsService { inner, histograms: self.histograms.clone() }
    }
}

#[derive(Clone)]
pub struct TimeCallsService<S> {
    inner: S,
    histograms: Arc<CallHistograms>,
}

impl<S, B, R> Service<http::Request<B>> for TimeCallsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        let method = METHODS.iter().position(|(p, _)| *p == path).unwrap_or(OTHER);
        let mut timing = Timing { histograms: self.histograms.clone(), method, started: Instant::now(), done: false };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let response = answer.await;
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok()?.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from),
                // tonic turns a service error into a status of its own.
                Err(_) => tonic::Code::Unknown,
            };
            timing.finish(code);
            response
        })
    }
}

/// A call being timed; observed as `CANCELLED` if dropped unfinished.
struct Timing {
    histograms: Arc<CallHistograms>,
    method: usize,
    started: Instant,
    done: bool,
}

impl Timing {
    fn finish(&mut self, code: tonic::Code) {
        self.done = true;
        self.histograms.observe(self.method, code, self.started);
    }
}

impl Drop for Timing {
    fn drop(&mut self) {
        if !self.done {
            self.histograms.observe(self.method, tonic::Code::Cancelled, self.started);
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Answers every call at once, with `grpc-status` set or not; or never (`None`).
    #[derive(Clone)]
    struct Answer(Option<Option<&'static str>>);

    impl Service<http::Request<()>> for Answer {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let Some(status) = self.0 else { return Box::pin(std::future::pending()) };
            let mut response = http::Response::new(());
            if let Some(code) = status {
                response.headers_mut().insert("grpc-status", http::HeaderValue::from_static(code));
            }
            Box::pin(std::future::ready(Ok(response)))
        }
    }

    #[tokio::test]
    async fn calls_are_timed_by_method_and_the_code_their_answer_starts_with() {
        let metrics = Metrics::default();
        let time = TimeCalls::new(&metrics);
        let call =
            |answer: Answer, path: &str| time.layer(answer).call(http::Request::builder().uri(path).body(()).unwrap());
        call(Answer(Some(None)), "/vaultlet.v1.Secrets/GetSecrets").await.unwrap();
        call(Answer(Some(Some("7"))), "/vaultlet.v1.Secrets/WatchSecrets").await.unwrap();
        call(Answer(Some(None)), "/a.caller.Chose/ThisPath").await.unwrap();
        // Dropped before it answers, as when its deadline passes.
        drop(call(Answer(None), "/vaultlet.v1.Secrets/GetSecrets"));

        let count = |method, code| metrics.latency.calls.get_or_create(&CallLabels { method, code }).count();
        assert_eq!(count("GetSecrets", "OK"), 1, "an answer without grpc-status starts as OK");
        assert_eq!(count("WatchSecrets", "PERMISSION_DENIED"), 1, "a trailers-only answer carries its code");
        assert_eq!(count("other", "OK"), 1, "no label takes a path a caller chose");
        assert_eq!(count("GetSecrets", "CANCELLED"), 1);
    }
}
