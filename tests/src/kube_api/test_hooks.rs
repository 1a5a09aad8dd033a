//! `/_test/...`: the fault switches and request counts over HTTP, for the binary's users
//! (the library exposes the same through `KubeApiServer`). Not part of any real API.

use std::time::Duration;

use http::{Method, Response};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;

use super::error::ApiError;
use super::http::{self as h, Body, Query};
use super::state::State;

fn done() -> Result<Response<Body>, ApiError> {
    Ok(h::json(200, &Status { status: Some("Success".to_owned()), ..Default::default() }))
}

pub fn serve(state: &State, method: &Method, hook: &str, query: &Query) -> Result<Response<Body>, ApiError> {
    match (method, hook) {
        (&Method::POST, "faults/drop-watches") => {
            state.faults.drop_watches();
            done()
        }
        (&Method::POST, "faults/expire-history") => {
            state.store.expire_history();
            done()
        }
        (&Method::POST, "faults/hang") => {
            state.faults.set_hung(true);
            done()
        }
        (&Method::POST, "faults/release") => {
            state.faults.set_hung(false);
            done()
        }
        (&Method::POST, "faults/delay") => {
            let ms = query
                .number("ms")?
                .ok_or_else(|| ApiError::BadRequest("faults/delay needs ?ms=MILLISECONDS".to_owned()))?;
            state.faults.set_delay(Duration::from_millis(ms));
            done()
        }
        (&Method::GET, "requests") => Ok(h::json(200, &state.requests.all())),
        (_, "faults/drop-watches" | "faults/expire-history" | "faults/hang" | "faults/release" | "faults/delay")
        | (_, "requests") => Err(ApiError::MethodNotAllowed),
        _ => Err(ApiError::PathNotFound),
    }
}
