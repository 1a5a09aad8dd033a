//! The client: a tonic channel over the agent's Unix socket, and the two calls.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use crate::codec::WatchCodec;
use crate::event_decoder::Received;
use crate::proto::secrets_client::SecretsClient;
use crate::token::Bearer;
use crate::{Error, Secret, SecretRef, TokenSource, WatchStream, proto};

pub const SOCKET_ENV: &str = "VAULTLET_SOCKET";
pub const DEFAULT_SOCKET: &str = "/run/vaultlet/vaultlet.sock";

/// A connection to the agent. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    rpc: SecretsClient<Channel>,
    socket: PathBuf,
    bearer: Arc<Bearer>,
    timeout: Option<Duration>,
}

impl Client {
    /// `VAULTLET_SOCKET`, else `/run/vaultlet/vaultlet.sock`.
    pub fn default_socket() -> PathBuf {
        std::env::var_os(SOCKET_ENV).map(PathBuf::from).unwrap_or_else(|| DEFAULT_SOCKET.into())
    }

    /// Connects to the default socket, with the token from `VAULTLET_TOKEN_FILE`.
    pub async fn connect_default() -> Result<Self, Error> {
        Self::connect(Self::default_socket()).await
    }

    /// Connects to the agent listening on `socket`. The token is read from
    /// `VAULTLET_TOKEN_FILE` (or its default path) on every call.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, Error> {
        let socket = socket.as_ref().to_path_buf();
        let path = socket.clone();
        // The URI is a placeholder: every connection goes to the socket. gRPC
        // sends it as :authority, and `localhost` is what servers accept.
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(service_fn(move |_: Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|source| Error::Connect { socket: socket.display().to_string(), source })?;
        Ok(Client {
            rpc: SecretsClient::new(channel.clone()),
            channel,
            socket,
            bearer: Arc::new(Bearer::new(TokenSource::from_env())),
            timeout: None,
        })
    }

    /// Where the token comes from (default: `TokenSource::from_env()`).
    pub fn with_token_source(mut self, token: TokenSource) -> Self {
        self.bearer = Arc::new(Bearer::new(token));
        self
    }

    /// A deadline for each `get_secrets` call (watches have none).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The connection to the agent, for its other services (`grpc.health.v1`, reflection).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Reads several secrets in one round trip, keyed by each reference as given
    /// (`"app"`, `"payments/db:secrets.json"`).
    pub async fn get_secrets<I, S>(&self, refs: I) -> Result<HashMap<String, Secret>, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let texts: Vec<String> = refs.into_iter().map(|r| r.as_ref().to_owned()).collect();
        let parsed = texts.iter().map(|t| t.parse()).collect::<Result<Vec<SecretRef>, _>>()?;
        let secrets = self.get(parsed).await?;
        Ok(texts.into_iter().zip(secrets).collect())
    }

    /// Reads several secrets in one round trip, in the order asked.
    pub async fn get(&self, refs: Vec<SecretRef>) -> Result<Vec<Secret>, Error> {
        let wanted = refs.len();
        let retry = refs.clone();
        let msg = proto::GetSecretsRequest { refs: refs.into_iter().map(Into::into).collect() };
        let mut req = self.request(msg)?;
        if let Some(t) = self.timeout {
            req.set_timeout(t);
        }
        let resp = match self.rpc.clone().get_secrets(req).await {
            Ok(resp) => {
                self.bearer.learn(resp.metadata());
                resp.into_inner()
            }
            // An agent that does not read `vaultlet-token` (an older one, after
            // a rollback behind the same socket): once more, as every agent reads it.
            Err(status) if self.bearer.forget() && status.code() == tonic::Code::Unauthenticated => {
                return Box::pin(self.get(retry)).await;
            }
            Err(status) => return Err(status.into()),
        };
        if resp.secrets.len() != wanted {
            return Err(Error::Protocol(format!("asked for {wanted} secrets, got {}", resp.secrets.len())));
        }
        resp.secrets.into_iter().map(Secret::from_proto).collect()
    }

    /// Watches secrets: a stream of events that reconnects by itself (with
    /// jittered backoff) when the agent restarts, resuming from the revisions
    /// already delivered, so no revision is yielded twice. It ends only on an
    /// error the agent gives for the request itself (bad reference, denied).
    pub fn watch<I, S>(&self, refs: I) -> Result<WatchStream, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let parsed = refs.into_iter().map(|r| r.as_ref().parse()).collect::<Result<Vec<SecretRef>, _>>()?;
        Ok(self.watch_refs(parsed))
    }

    /// `watch` with references already parsed.
    pub fn watch_refs(&self, refs: Vec<SecretRef>) -> WatchStream {
        WatchStream::new(self.clone(), refs)
    }

    pub(crate) async fn open_watch(
        &self,
        req: proto::WatchSecretsRequest,
    ) -> Result<tonic::Streaming<Received>, Error> {
        let req = self.request(req)?;
        match self.watch_secrets(req).await {
            Ok(resp) => {
                self.bearer.learn(resp.metadata());
                Ok(resp.into_inner())
            }
            Err(status) => {
                // The stream reopens by itself, then with `authorization`.
                self.bearer.forget();
                Err(status.into())
            }
        }
    }

    /// The generated `watch_secrets`, with the codec that decodes events
    /// straight into the client's (`event_decoder`).
    async fn watch_secrets(
        &self,
        mut req: tonic::Request<proto::WatchSecretsRequest>,
    ) -> Result<tonic::Response<tonic::Streaming<Received>>, tonic::Status> {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        grpc.ready().await.map_err(|e| tonic::Status::unknown(format!("Service was not ready: {e}")))?;
        req.extensions_mut().insert(tonic::GrpcMethod::new("vaultlet.v1.Secrets", "WatchSecrets"));
        let path = http::uri::PathAndQuery::from_static("/vaultlet.v1.Secrets/WatchSecrets");
        grpc.server_streaming(req, path, WatchCodec).await
    }

    /// Wraps a message with the caller's current token.
    fn request<T>(&self, msg: T) -> Result<tonic::Request<T>, Error> {
        let mut req = tonic::Request::new(msg);
        self.bearer.insert(req.metadata_mut())?;
        Ok(req)
    }
}
