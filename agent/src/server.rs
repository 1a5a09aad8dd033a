//! The gRPC edge: the `Secrets` service, health and reflection over a Unix
//! socket. Requests flow down (identity -> policy -> cache); typed errors come
//! back up and become statuses here, with messages a person can act on.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use secrecy::ExposeSecret;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use vaultlet_client::proto::secrets_server::{Secrets, SecretsServer};
use vaultlet_client::proto::{self, EventKind};
use vaultlet_client::{RefError, SecretRef, code_name};

use crate::audit::{self, AuditLog};
use crate::cache::{Cache, SecretState};
use crate::hub::{self, HubEvent, Watched};
use crate::identity::peer::{Peer, PeerStream};
use crate::identity::review::ReviewError;
use crate::identity::{AuthError, Authenticator, Caller};
use crate::limits::{Admission, Refused};
use prometheus_client::metrics::counter::Counter;

use crate::metrics::{CallLabels, DecisionLabels, Metrics};
use crate::policy::{Denied, Policy, Refusal};
use crate::secret::{ProjectionError, SecretId, SecretVersion, wire_format};
use crate::source::Unavailable;

/// Most references in one request.
pub const MAX_REFS: usize = 128;
/// Largest request accepted; requests are lists of names, so this is generous.
pub const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// HTTP/2 settings of each connection (see `serve`).
const MAX_STREAMS_PER_CONNECTION: u32 = 256;
const MAX_HEADER_BYTES: u32 = 32 * 1024;
const KEEPALIVE: Duration = Duration::from_secs(60);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// How long open connections get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    Unauthenticated(#[from] AuthError),
    #[error("secrets[{index}]: {error}")]
    InvalidRef { index: usize, error: RefError },
    #[error("no secrets requested: name at least one reference")]
    NoRefs,
    #[error("{0} references in one request; the limit is {MAX_REFS}")]
    TooManyRefs(usize),
    #[error("{reference}: permission denied: {denied}")]
    Denied { reference: String, denied: Denied },
    #[error("secret {id} not found{}", hint.as_ref().map(|h| format!(" ({h})")).unwrap_or_default())]
    NotFound { id: SecretId, hint: Option<String> },
    #[error("{reference}: {error}")]
    Projection { reference: String, error: ProjectionError },
    #[error("secret {id} cannot be decoded: {message}")]
    Undecodable { id: SecretId, message: String },
    #[error("{reference}: {error}")]
    Unavailable { reference: String, error: Unavailable },
    #[error("{0}")]
    Limit(#[from] Refused),
    #[error("the agent is starting: it has not listed the cluster's Secrets yet; retry in a moment")]
    Starting,
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        let code = match &e {
            ServiceError::Unauthenticated(a) if a.is_unavailable() => tonic::Code::Unavailable,
            ServiceError::Unauthenticated(AuthError::Review(ReviewError::RateLimited)) => {
                tonic::Code::ResourceExhausted
            }
            ServiceError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            ServiceError::InvalidRef { .. } | ServiceError::NoRefs | ServiceError::TooManyRefs(_) => {
                tonic::Code::InvalidArgument
            }
            ServiceError::Denied { .. } => tonic::Code::PermissionDenied,
            ServiceError::NotFound { .. } => tonic::Code::NotFound,
            ServiceError::Projection { error, .. } => error.code(),
            ServiceError::Undecodable { .. } => tonic::Code::FailedPrecondition,
            ServiceError::Unavailable { .. } => tonic::Code::Unavailable,
            ServiceError::Limit(_) => tonic::Code::ResourceExhausted,
            ServiceError::Starting => tonic::Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

pub struct SecretsService {
    cache: Arc<Cache>,
    auth: Authenticator,
    policy: Policy,
    metrics: Arc<Metrics>,
    counters: Counters,
    audit: Option<AuditLog>,
    admission: Arc<Admission>,
    shutdown: CancellationToken,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::SecretEvent, Status>> + Send>>;

/// Longest reference text kept in an audit record.
const AUDIT_REF_CHARS: usize = 300;

const DECISIONS: [&str; 5] = ["allowed", "denied", "unauthenticated", "unavailable", "invalid"];
const METHODS: [&str; 2] = ["GetSecrets", "WatchSecrets"];

/// The counters of every decision and every (method, status code), resolved
/// once so that a call does not look labels up.
struct Counters {
    decisions: Vec<Counter>,
    calls: Vec<Vec<Counter>>,
}

impl Counters {
    fn new(metrics: &Metrics) -> Counters {
        let decisions = DECISIONS
            .iter()
            .map(|&decision| metrics.decisions.get_or_create_owned(&DecisionLabels { decision }))
            .collect();
        let calls = METHODS
            .iter()
            .map(|&method| {
                (0..=16)
                    .map(|c| {
                        let code = code_name(tonic::Code::from(c));
                        metrics.calls.get_or_create_owned(&CallLabels { method, code })
                    })
                    .collect()
            })
            .collect();
        Counters { decisions, calls }
    }

    fn decision(&self, decision: &str) {
        if let Some(i) = DECISIONS.iter().position(|d| *d == decision) {
            self.decisions[i].inc();
        }
    }

    fn call(&self, method: usize, code: tonic::Code) {
        self.calls[method][code as usize].inc();
    }
}

impl SecretsService {
    pub fn new(
        cache: Arc<Cache>,
        auth: Authenticator,
        policy: Policy,
        metrics: Arc<Metrics>,
        audit: Option<AuditLog>,
        admission: Arc<Admission>,
        shutdown: CancellationToken,
    ) -> Self {
        let counters = Counters::new(&metrics);
        SecretsService { cache, auth, policy, metrics, counters, audit, admission, shutdown }
    }

    fn count<T>(&self, method: usize, result: &Result<T, Status>) {
        self.counters.call(method, result.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok));
    }

    /// Authenticates the caller, validates the references and checks policy for
    /// each; counts, logs and audits the decision.
    async fn admit<T>(
        &self,
        method: &'static str,
        request: &Request<T>,
        refs: Vec<Option<proto::SecretRef>>,
    ) -> Result<(Arc<Caller>, Vec<(SecretId, SecretRef)>), ServiceError> {
        let peer = request.extensions().get::<Peer>();
        let mut record = audit::Record {
            method,
            peer_pid: peer.and_then(|p| p.pid),
            peer_uid: peer.and_then(|p| p.uid),
            ..audit::Record::default()
        };
        let outcome = self.decide(request, refs, &mut record).await;
        record.decision = match &outcome {
            Ok(_) => "allowed",
            Err(ServiceError::Unauthenticated(e)) if e.is_unavailable() => "unavailable",
            Err(ServiceError::Starting) => "unavailable",
            Err(ServiceError::Unauthenticated(_)) => "unauthenticated",
            Err(ServiceError::Denied { .. }) => "denied",
            Err(_) => "invalid",
        };
        if let Err(e) = &outcome {
            let reason = match e {
                ServiceError::Denied { denied, .. } => denied.reason.clone(),
                other => other.to_string(),
            };
            tracing::info!(method, decision = record.decision, caller = record.caller.as_deref(), pid = record.peer_pid, %reason, "refused");
            record.reason = Some(reason);
        }
        self.counters.decision(record.decision);
        if let Some(log) = &self.audit {
            log.record(record).await;
        }
        outcome
    }

    async fn decide<T>(
        &self,
        request: &Request<T>,
        refs: Vec<Option<proto::SecretRef>>,
        record: &mut audit::Record,
    ) -> Result<(Arc<Caller>, Vec<(SecretId, SecretRef)>), ServiceError> {
        let caller = self.auth.authenticate(request).await?;
        record.caller = caller.audit_name.clone();
        record.pod = caller.audit_pod.clone();
        record.pod_uid = caller.audit_pod_uid.clone();
        Self::check_count(refs.len())?;
        let mut resolved = Vec::with_capacity(refs.len());
        let mut failure = None;
        for (i, r) in refs.into_iter().enumerate() {
            let r = SecretRef::from(r.unwrap_or_default()).in_namespace(&caller.namespace);
            record.secrets.push(r.to_string().chars().take(AUDIT_REF_CHARS).collect());
            match self.resolve(&caller, i, r) {
                Ok(ok) => resolved.push(ok),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok((caller, resolved)),
        }
    }

    /// Validates one reference (its namespace filled in) and checks policy.
    fn resolve(&self, caller: &Caller, index: usize, r: SecretRef) -> Result<(SecretId, SecretRef), ServiceError> {
        r.validate().map_err(|error| ServiceError::InvalidRef { index, error })?;
        let id = SecretId::new(&r.namespace, &r.name);
        match self.policy.check(caller, &id) {
            Ok(()) => {}
            Err(Refusal::Denied(denied)) => return Err(ServiceError::Denied { reference: r.to_string(), denied }),
            Err(Refusal::NotReady) => return Err(ServiceError::Starting),
        }
        Ok((id, r))
    }

    fn check_count(n: usize) -> Result<(), ServiceError> {
        match n {
            0 => Err(ServiceError::NoRefs),
            n if n > MAX_REFS => Err(ServiceError::TooManyRefs(n)),
            _ => Ok(()),
        }
    }

    async fn get(
        &self,
        mut request: Request<proto::GetSecretsRequest>,
    ) -> Result<Response<proto::GetSecretsResponse>, ServiceError> {
        let refs = std::mem::take(&mut request.get_mut().refs).into_iter().map(Some).collect();
        let (_, resolved) = self.admit("GetSecrets", &request, refs).await?;
        // Several secrets load concurrently (a cold start pays one round trip).
        let secrets = futures::future::try_join_all(resolved.into_iter().map(|(id, r)| self.get_one(id, r))).await?;
        Ok(Response::new(proto::GetSecretsResponse { secrets }))
    }

    async fn get_one(&self, id: SecretId, r: SecretRef) -> Result<proto::Secret, ServiceError> {
        let state = self
            .cache
            .state(&id)
            .await
            .map_err(|error| ServiceError::Unavailable { reference: r.to_string(), error })?;
        match &*state {
            SecretState::Absent => {
                let hint = self.cache.source().absent_hint(&id);
                Err(ServiceError::NotFound { id, hint })
            }
            SecretState::Failed(e) => Err(ServiceError::Undecodable { id, message: e.message.clone() }),
            SecretState::Ready { version, .. } => {
                encode(&id, &r, version).map_err(|error| ServiceError::Projection { reference: r.to_string(), error })
            }
        }
    }

    async fn watch(&self, request: Request<proto::WatchSecretsRequest>) -> Result<Response<EventStream>, ServiceError> {
        let refs = request.get_ref().secrets.iter().map(|t| t.r#ref.clone()).collect();
        let (_, resolved) = self.admit("WatchSecrets", &request, refs).await?;
        let peer = request.extensions().get::<Peer>().map_or_else(|| "an unidentified process".to_owned(), Peer::key);
        let slot = self.admission.stream(&peer).inspect_err(|_| {
            self.metrics.refused_streams.inc();
        })?;
        let targets = request.into_inner().secrets;
        let mut watched = Vec::with_capacity(targets.len());
        for ((index, t), (id, reference)) in targets.into_iter().enumerate().zip(resolved) {
            let states = self
                .cache
                .subscribe(&id)
                .await
                .map_err(|error| ServiceError::Unavailable { reference: reference.to_string(), error })?;
            let known_revision = (!t.known_revision.is_empty()).then_some(t.known_revision);
            watched.push(Watched { index: index as u32, id, reference, known_revision, states });
        }
        let open = (StreamGauge::new(&self.metrics), slot);
        // Streams end when the agent shuts down, so that clients reconnect to the next one.
        let events = hub::events(watched)
            .map(move |e| {
                let _open = &open;
                Ok(encode_event(e))
            })
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Response::new(Box::pin(events)))
    }
}

#[tonic::async_trait]
impl Secrets for SecretsService {
    async fn get_secrets(
        &self,
        request: Request<proto::GetSecretsRequest>,
    ) -> Result<Response<proto::GetSecretsResponse>, Status> {
        let result = self.get(request).await.map_err(Status::from);
        self.count(0, &result);
        result
    }

    type WatchSecretsStream = EventStream;

    async fn watch_secrets(
        &self,
        request: Request<proto::WatchSecretsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let result = self.watch(request).await.map_err(Status::from);
        self.count(1, &result);
        result
    }
}

/// Counts an open watch stream for as long as it lives.
struct StreamGauge(Arc<Metrics>);

impl StreamGauge {
    fn new(metrics: &Arc<Metrics>) -> StreamGauge {
        metrics.watch_streams.inc();
        StreamGauge(metrics.clone())
    }
}

impl Drop for StreamGauge {
    fn drop(&mut self) {
        self.0.watch_streams.dec();
    }
}

/// The wire form of what `r` sees of `version`: the one place values leave
/// their zeroizing containers.
fn encode(id: &SecretId, r: &SecretRef, version: &SecretVersion) -> Result<proto::Secret, ProjectionError> {
    let view = version.project(id, r)?;
    Ok(proto::Secret {
        r#ref: Some(r.clone().into()),
        revision: version.revision.clone(),
        key_version: view.key_version,
        values: view.values.iter().map(|(k, v)| ((*k).to_owned(), v.expose_secret().to_owned())).collect(),
        raw: view.raw.map(<[u8]>::to_vec).unwrap_or_default(),
        format: wire_format(view.format) as i32,
    })
}

fn encode_event(e: HubEvent) -> proto::SecretEvent {
    let only_ref = || proto::Secret { r#ref: Some((*e.reference).clone().into()), ..Default::default() };
    let (secret, error) = match &e.version {
        Some(v) => match encode(&e.id, &e.reference, v) {
            Ok(s) => (s, e.error),
            Err(p) => {
                let error = hub::EventError { code: p.code(), message: p.to_string(), revision: v.revision.clone() };
                return proto::SecretEvent {
                    kind: EventKind::Error as i32,
                    index: e.index,
                    secret: Some(only_ref()),
                    error: Some(error_to_proto(error)),
                };
            }
        },
        None => (only_ref(), e.error),
    };
    proto::SecretEvent { kind: e.kind as i32, index: e.index, secret: Some(secret), error: error.map(error_to_proto) }
}

fn error_to_proto(e: hub::EventError) -> proto::EventError {
    proto::EventError { code: e.code as i32, message: e.message, revision: e.revision }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {0}: {1}")]
    Socket(PathBuf, std::io::Error),
    #[error("another agent is already serving on {0}; stop it or choose another --socket")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotSocket(PathBuf),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("serving: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Accepted connections, each with its peer (process, pod) read once and its
/// place within the connection limits. An accept error (out of file
/// descriptors) never ends serving: tonic would stop on it.
fn incoming(
    listener: UnixListener,
    proc_root: PathBuf,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
) -> impl Stream<Item = Result<PeerStream, std::io::Error>> {
    futures::stream::unfold(listener, move |listener| {
        let (proc_root, admission, metrics) = (proc_root.clone(), admission.clone(), metrics.clone());
        async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let peer = Peer::of(&stream, &proc_root);
                        match admission.connection(&peer.key()) {
                            Ok(slot) => return Some((Ok(PeerStream::new(stream, peer, slot)), listener)),
                            Err(refused) => {
                                metrics.refused_connections.inc();
                                if admission.should_warn() {
                                    tracing::warn!(pid = ?peer.pid, reason = %refused, "connection refused (one line per 10 s)");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        if admission.should_warn() {
                            tracing::warn!(error = %e, "cannot accept connections (one line per 10 s); retrying");
                        }
                        tokio::time::sleep(ACCEPT_RETRY).await;
                    }
                }
            }
        }
    })
}

/// Binds `socket` (replacing a stale one, never a live one), readable and
/// writable by owner and group only.
pub async fn bind(socket: &Path) -> Result<UnixListener, ServeError> {
    let err = |e| ServeError::Socket(socket.to_owned(), e);
    match std::fs::symlink_metadata(socket) {
        Ok(meta) if meta.file_type().is_socket() => {
            if tokio::net::UnixStream::connect(socket).await.is_ok() {
                return Err(ServeError::InUse(socket.to_owned()));
            }
            std::fs::remove_file(socket).map_err(err)?;
        }
        Ok(_) => return Err(ServeError::NotSocket(socket.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    if let Some(dir) = socket.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750)).map_err(err)?;
    }
    let listener = UnixListener::bind(socket).map_err(err)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Serves the API, health and reflection on `listener` until `shutdown`, then
/// removes the socket file.
pub async fn serve(
    listener: UnixListener,
    socket: &Path,
    proc_root: PathBuf,
    service: SecretsService,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let admission = service.admission.clone();
    let metrics = service.metrics.clone();
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<SecretsServer<SecretsService>>().await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let secrets = SecretsServer::new(service).max_decoding_message_size(MAX_REQUEST_BYTES);

    let server = tonic::transport::Server::builder()
        // Per connection: streams in flight, header size (a token is a few KiB at
        // most), and pings so that a peer that went away frees its connection.
        .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
        .http2_max_header_list_size(MAX_HEADER_BYTES)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(secrets)
        .serve_with_incoming_shutdown(
            incoming(listener, proc_root, admission, metrics),
            shutdown.clone().cancelled_owned(),
        );
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r,
        () = async { shutdown.cancelled().await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
            tracing::warn!("connections still open {SHUTDOWN_GRACE:?} after shutdown; closing them");
            Ok(())
        }
    };
    let _ = std::fs::remove_file(socket);
    Ok(result?)
}
