//! The `Secrets` service: a thin handler per method. Each call goes
//! authenticate -> authorize -> load -> commit the audit record -> answer; a
//! value leaves only after its record is written.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use futures::Stream;
use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;
use tonic::metadata::{Ascii, MetadataKey, MetadataValue};
use tonic::{Request, Response, Status};
use vaultlet_client::encoded::{EncodedEvent, EncodedSecret, EncodedSecrets};
use vaultlet_client::proto::{self};
use vaultlet_client::server::secrets_server::Secrets;
use vaultlet_client::{FEATURES_METADATA, INDEXED_TOKEN, SecretRef, code_name};

use super::authorize::authorize;
use super::encode::encode_shared;
use super::error::ServiceError;
use super::watch;
use crate::audit::{AuditLog, Decision, NotWritten, Record};
use crate::cache::{Cache, SecretState};
use crate::hub::Watched;
use crate::identity::peer::Peer;
use crate::identity::{Authenticator, Caller};
use crate::limits::{Admission, PeerKey};
use crate::metrics::{CallLabels, DecisionLabels, Metrics};
use crate::policy::Policy;
use crate::secret::SecretId;

/// What the service works with.
pub struct Parts {
    pub cache: Arc<Cache>,
    pub auth: Arc<Authenticator>,
    pub policy: Arc<Policy>,
    pub metrics: Arc<Metrics>,
    /// None in development mode.
    pub audit: Option<AuditLog>,
    pub admission: Arc<Admission>,
    /// Watch streams end when it is cancelled, so that clients reconnect to the next agent.
    pub shutdown: CancellationToken,
}

pub struct SecretsService {
    parts: Arc<Parts>,
    counters: Counters,
    /// Changes whenever every open watch checks its access again, or ends (see `watch::rechecks`).
    rechecks: watch::Rechecks,
}

pub type EventStream = Pin<Box<dyn Stream<Item = Result<EncodedEvent, Status>> + Send>>;

const DECISIONS: [Decision; 7] = [
    Decision::Allowed,
    Decision::Denied,
    Decision::Unauthenticated,
    Decision::Unavailable,
    Decision::Invalid,
    Decision::Refused,
    Decision::Revoked,
];

#[derive(Clone, Copy)]
enum Method {
    Get = 0,
    Watch = 1,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Get => "GetSecrets",
            Method::Watch => "WatchSecrets",
        }
    }
}

/// The counters of every decision and every (method, status code), resolved
/// once so that a call does not look labels up.
struct Counters {
    decisions: Vec<Counter>,
    calls: [Vec<Counter>; 2],
}

impl Counters {
    fn new(metrics: &Metrics) -> Counters {
        let decisions = DECISIONS
            .iter()
            .map(|d| metrics.decisions.get_or_create_owned(&DecisionLabels { decision: d.name() }))
            .collect();
        let calls = [Method::Get, Method::Watch].map(|m| {
            (0..=16)
                .map(|c| {
                    let code = code_name(tonic::Code::from(c));
                    metrics.calls.get_or_create_owned(&CallLabels { method: m.name(), code })
                })
                .collect()
        });
        Counters { decisions, calls }
    }

    fn decision(&self, decision: Decision) {
        self.decisions[decision as usize].inc();
    }
}

/// A call in progress: its audit record, filled in as the call goes.
struct Call {
    record: Record,
    /// Set once every reference is allowed: later failures keep the decision.
    authorized: bool,
}

/// The process that made a call, as its audit record names it.
#[derive(Clone, Copy)]
pub struct Process {
    pid: Option<i32>,
    uid: Option<u32>,
}

impl Process {
    fn of(peer: Option<&Peer>) -> Process {
        Process { pid: peer.and_then(|p| p.pid), uid: peer.and_then(|p| p.uid) }
    }
}

impl Call {
    fn new(method: Method, process: Process) -> Call {
        let record =
            Record { method: method.name(), peer_pid: process.pid, peer_uid: process.uid, ..Record::default() };
        Call { record, authorized: false }
    }

    fn identify(&mut self, caller: &Caller) {
        self.record.caller = caller.audit_name.clone();
        self.record.pod = caller.audit_pod.clone();
        self.record.pod_uid = caller.audit_pod_uid.clone();
        if caller.binding_violated {
            self.record.binding = Some("violated");
        }
    }
}

/// The record of the call that opened a watch, as it was committed before the
/// call's outcome: made again when the watch is revoked rather than kept by
/// every stream (about 270 bytes a stream with its strings, 2.6 MB with
/// 10,000). An open watch was allowed, so `references`, resolved in request
/// order, are the texts `authorize` gave.
pub fn opening_record<'a>(
    process: Process,
    caller: &Caller,
    references: impl Iterator<Item = &'a SecretRef>,
) -> Record {
    let mut call = Call::new(Method::Watch, process);
    call.identify(caller);
    references.for_each(|r| call.record.push_secret(r.to_string()));
    call.record
}

impl SecretsService {
    /// Needs a Tokio runtime: it starts the task behind `rechecks`.
    pub fn new(parts: Parts) -> Self {
        let counters = Counters::new(&parts.metrics);
        let rechecks = watch::rechecks(&parts);
        SecretsService { parts: Arc::new(parts), counters, rechecks }
    }

    pub fn parts(&self) -> &Arc<Parts> {
        &self.parts
    }

    /// Authenticates the caller and authorizes every reference.
    async fn admit(
        &self,
        call: &mut Call,
        peer: Option<&Peer>,
        metadata: &tonic::metadata::MetadataMap,
        refs: Vec<Option<proto::SecretRef>>,
    ) -> Result<(Arc<Caller>, Vec<(SecretId, SecretRef)>), ServiceError> {
        let caller = self.parts.auth.authenticate(peer, metadata).await?;
        call.identify(&caller);
        let (texts, resolved) = authorize(&caller, refs, &self.parts.policy);
        texts.into_iter().for_each(|t| call.record.push_secret(t));
        let resolved = resolved?;
        call.authorized = true;
        Ok((caller, resolved))
    }

    /// Records the call's outcome (`error`, or success) and commits it. A
    /// value may leave only when this returns `Ok`.
    async fn commit(&self, mut call: Call, error: Option<&ServiceError>) -> Result<(), NotWritten> {
        let record = &mut call.record;
        record.decision = match error {
            Some(e) if !call.authorized => e.decision(),
            _ => Decision::Allowed,
        };
        record.status = Some(code_name(error.map_or(tonic::Code::Ok, ServiceError::code)));
        if let Some(e) = error {
            let reason = e.reason();
            tracing::info!(method = record.method, decision = record.decision.name(), caller = record.caller.as_deref(), pid = record.peer_pid, %reason, "refused");
            record.set_reason(&reason);
        }
        self.counters.decision(record.decision);
        match &self.parts.audit {
            Some(log) => log.commit(call.record).await,
            None => Ok(()),
        }
    }

    fn count<T>(&self, method: Method, result: &Result<T, Status>) {
        let code = result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        self.counters.calls[method as usize][code as usize].inc();
    }

    async fn get(&self, mut request: Request<proto::GetSecretsRequest>) -> Result<Response<EncodedSecrets>, Status> {
        let refs = std::mem::take(&mut request.get_mut().refs).into_iter().map(Some).collect();
        let peer = request.extensions().get::<Peer>();
        let mut call = Call::new(Method::Get, Process::of(peer));
        let outcome = async {
            let (_, resolved) = self.admit(&mut call, peer, request.metadata(), refs).await?;
            // Several secrets load concurrently (a cold start pays one round
            // trip); the common single one skips the join's bookkeeping.
            let loaded = match &resolved[..] {
                [(id, r)] => vec![self.load(id, r).await?],
                _ => futures::future::try_join_all(resolved.iter().map(|(id, r)| self.load(id, r))).await?,
            };
            let mut secrets = Vec::with_capacity(loaded.len());
            for ((secret, unbound), (_, r)) in loaded.into_iter().zip(&resolved) {
                if unbound {
                    call.record.unbound.push(r.to_string());
                }
                secrets.push(secret);
            }
            Ok(EncodedSecrets { secrets })
        }
        .await;
        let written = self.commit(call, outcome.as_ref().err()).await;
        let result = match (outcome, written) {
            (Ok(response), Ok(())) => Ok(announced(response)),
            // Nothing leaves unaudited (the shared encodings stay with their versions).
            (Ok(_), Err(e)) => Err(ServiceError::from(e).into()),
            // A refusal releases nothing: the caller hears the refusal.
            (Err(e), _) => Err(e.into()),
        };
        self.count(Method::Get, &result);
        result
    }

    /// The wire form of `r`'s secret, and whether it was served unbound.
    async fn load(&self, id: &SecretId, r: &SecretRef) -> Result<(EncodedSecret, bool), ServiceError> {
        let state = self
            .parts
            .cache
            .state(id)
            .await
            .map_err(|error| ServiceError::Unavailable { reference: r.to_string(), error })?;
        match &state.state {
            SecretState::Absent => {
                let hint = self.parts.cache.source().absent_hint(id);
                Err(ServiceError::NotFound { id: id.clone(), hint })
            }
            SecretState::Failed(e) => Err(ServiceError::Undecodable { id: id.clone(), message: e.message.clone() }),
            SecretState::Ready { version, .. } => match encode_shared(id, r, version) {
                Ok(secret) => Ok((secret, version.unbound)),
                Err(error) => Err(ServiceError::Projection { reference: r.to_string(), error }),
            },
        }
    }

    async fn watch(&self, request: Request<proto::WatchSecretsRequest>) -> Result<Response<EventStream>, Status> {
        let refs: Vec<_> = request.get_ref().secrets.iter().map(|t| t.r#ref.clone()).collect();
        let peer = request.extensions().get::<Peer>();
        let key = peer.map_or(PeerKey::Unidentified, Peer::key);
        let process = Process::of(peer);
        let mut call = Call::new(Method::Watch, process);
        let outcome = async {
            let (caller, resolved) = self.admit(&mut call, peer, request.metadata(), refs).await?;
            let slot = self.parts.admission.stream(&key).inspect_err(|_| {
                self.parts.metrics.refused_streams.inc();
            })?;
            let mut watched = Vec::with_capacity(resolved.len());
            for ((index, t), (id, reference)) in request.get_ref().secrets.iter().enumerate().zip(resolved) {
                let subscription = self
                    .parts
                    .cache
                    .subscribe(&id, peer.map_or(0, |p| p.connection))
                    .await
                    .map_err(|error| ServiceError::Unavailable { reference: reference.to_string(), error })?;
                let known_revision = (!t.known_revision.is_empty()).then(|| t.known_revision.clone());
                watched.push(Watched { index: index as u32, id, reference, known_revision, subscription });
            }
            Ok((caller, watched, slot))
        }
        .await;
        let written = self.commit(call, outcome.as_ref().err()).await;
        let result = match (outcome, written) {
            (Ok((caller, watched, slot)), Ok(())) => {
                Ok(announced(watch::stream(&self.parts, self.rechecks.clone(), caller, watched, slot, process)))
            }
            (Ok(_), Err(e)) => Err(ServiceError::from(e).into()),
            (Err(e), _) => Err(e.into()),
        };
        self.count(Method::Watch, &result);
        result
    }
}

/// A response that tells the client what this agent reads (see
/// `vaultlet_client::TOKEN_METADATA`: the token under a name HPACK indexes).
fn announced<T>(message: T) -> Response<T> {
    // Made once: from `&str`s, each response would parse and check them again.
    static FEATURES: LazyLock<(MetadataKey<Ascii>, MetadataValue<Ascii>)> =
        LazyLock::new(|| (MetadataKey::from_static(FEATURES_METADATA), MetadataValue::from_static(INDEXED_TOKEN)));
    let mut response = Response::new(message);
    let (key, value) = &*FEATURES;
    response.metadata_mut().insert(key.clone(), value.clone());
    response
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn get_secrets(
        &self,
        request: Request<proto::GetSecretsRequest>,
    ) -> Result<Response<EncodedSecrets>, Status> {
        self.get(request).await
    }

    type WatchSecretsStream = EventStream;

    async fn watch_secrets(
        &self,
        request: Request<proto::WatchSecretsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.watch(request).await
    }
}
