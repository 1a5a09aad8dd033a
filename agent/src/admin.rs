//! The admin HTTP endpoints for kubelet and Prometheus: `/healthz` (the process
//! answers), `/readyz` (ready to serve: the reasons when not) and `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Says what still keeps the agent from being ready (empty: ready).
pub type ReadinessCheck = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    readiness: ReadinessCheck,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin listener: accept failed");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let response = route(&req, &metrics, &readiness);
                async move { Ok::<_, Infallible>(response) }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(req: &Request<Incoming>, metrics: &Metrics, readiness: &ReadinessCheck) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" => match readiness().as_slice() {
            [] => text(StatusCode::OK, "ready\n".into()),
            waiting => text(StatusCode::SERVICE_UNAVAILABLE, format!("not ready:\n- {}\n", waiting.join("\n- "))),
        },
        "/metrics" => {
            // Readiness as a series, for the alert on an agent that stays unready.
            metrics.ready.set(i64::from(readiness().is_empty()));
            let mut r = text(StatusCode::OK, metrics.encode());
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found: try /healthz, /readyz or /metrics\n".into()),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}
