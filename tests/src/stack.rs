//! The whole production path on one machine: the Kubernetes API test server,
//! a real OpenBao configured by `deploy/openbao/setup.sh`, and `vaultlet serve`
//! as a separate process logging in with its own pod-bound token.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;

use crate::agent::{AgentProcess, vaultlet_bin};
use crate::bao::{Bao, ROOT_TOKEN};
use crate::kube_api::{KubeApiServer, Options};

pub const AGENT_NAMESPACE: &str = "vaultlet-system";
pub const NODE: &str = "node-1";
/// Audience of the agent's own token for the Vault login (deploy uses the same).
pub const VAULT_AUDIENCE: &str = "vault";

pub struct Stack {
    pub dir: tempfile::TempDir,
    pub kube: KubeApiServer,
    pub bao: Bao,
    pub kubeconfig: PathBuf,
    agent_token: PathBuf,
    files: StackFiles,
    admin_port: u16,
}

/// What `setup.sh` reads besides its environment.
struct StackFiles {
    ca: PathBuf,
    reviewer: PathBuf,
}

/// A pod of an app: its identity and the token file its client reads.
pub struct App {
    pub namespace: String,
    pub service_account: String,
    pub pod: String,
    pub pod_uid: String,
    pub token_file: PathBuf,
}

impl Stack {
    /// Starts the API server and OpenBao, and configures OpenBao with the
    /// deploy script for Transit keys `keys`.
    pub async fn start(keys: &[&str]) -> Stack {
        Self::start_with(keys, Options::default()).await
    }

    /// `start`, with the API test server started with `options`.
    pub async fn start_with(keys: &[&str], options: Options) -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let kube = KubeApiServer::start(options).await.expect("API test server");
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig).expect("kubeconfig");
        let bao = Bao::start(dir.path());

        ensure_namespace(&kube, AGENT_NAMESPACE);
        kube.create_service_account(AGENT_NAMESPACE, "vaultlet").expect("agent service account");
        kube.create_service_account(AGENT_NAMESPACE, "vaultlet-recrypt").expect("recrypt service account");
        kube.create_pod(AGENT_NAMESPACE, "vaultlet-agent", NODE, "vaultlet").expect("agent pod");

        let ca = dir.path().join("kube-ca.pem");
        std::fs::write(&ca, TEST_CA_PEM).expect("CA file");
        // OpenBao runs outside the cluster: it reviews login tokens with a
        // reviewer token of its own, as the deploy guide describes.
        kube.create_service_account("kube-system", "openbao-reviewer").expect("reviewer service account");
        let reviewer = kube
            .mint_token("kube-system", "openbao-reviewer", None, &[kube.issuer()], Duration::from_secs(86400))
            .expect("reviewer token");
        let reviewer_file = dir.path().join("reviewer-token");
        std::fs::write(&reviewer_file, reviewer).expect("reviewer token file");
        let stack_files = StackFiles { ca, reviewer: reviewer_file };
        let out = openbao_setup(&bao, &kube, &stack_files, keys);
        assert!(
            out.status.success(),
            "setup.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );

        let token = kube
            .mint_token(
                AGENT_NAMESPACE,
                "vaultlet",
                Some("vaultlet-agent"),
                &[VAULT_AUDIENCE],
                Duration::from_secs(86400),
            )
            .expect("agent token");
        let agent_token = dir.path().join("agent-token");
        std::fs::write(&agent_token, format!("{token}\n")).expect("agent token file");
        let admin_port = crate::bao::free_port();
        Stack { dir, kube, bao, kubeconfig, agent_token, files: stack_files, admin_port }
    }

    /// Runs `deploy/openbao/setup.sh` against this stack again (it is idempotent).
    pub fn openbao_setup(&self, keys: &[&str]) -> Output {
        openbao_setup(&self.bao, &self.kube, &self.files, keys)
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("run/vaultlet.sock")
    }

    /// The `serve` command line for this stack, plus `extra` (an `--audit-log`
    /// there replaces the stack's own).
    pub fn serve_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "serve",
            "--socket",
            self.socket().to_str().unwrap(),
            "--node-name",
            NODE,
            "--admin-listen",
            &format!("127.0.0.1:{}", self.admin_port),
            "--vault-addr",
            &self.bao.addr,
            "--vault-auth-role",
            "vaultlet-agent",
            "--vault-auth-jwt-file",
            self.agent_token.to_str().unwrap(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if !extra.contains(&"--audit-log") {
            args.extend(["--audit-log".to_owned(), self.audit_log().display().to_string()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        args
    }

    /// GET `path` from the agent's admin endpoint: the status code and the body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.admin_port)).expect("admin endpoint");
        write!(conn, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
        let mut response = String::new();
        conn.read_to_string(&mut response).expect("response");
        let status = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    /// The value of a counter or gauge on the agent's `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn audit_log(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    /// Where `start_agent` appends the agent's log (at debug level, so tests can
    /// check that no value, token or ciphertext ever reaches it).
    pub fn agent_log(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Starts `vaultlet serve` (logging at debug level) and waits until its
    /// socket accepts connections.
    pub fn start_agent(&self, extra: &[&str]) -> AgentProcess {
        self.start_agent_logging(extra, "debug")
    }

    /// `start_agent` with the log level `level` (the benchmark logs little).
    pub fn start_agent_logging(&self, extra: &[&str], level: &str) -> AgentProcess {
        let args = self.serve_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [("KUBECONFIG", self.kubeconfig.to_str().unwrap()), ("VAULTLET_LOG", level)];
        AgentProcess::launch(&args, &env, Some(&self.agent_log()), &self.socket())
    }

    /// A pod of `namespace` running as `service_account` on `node`, with a
    /// projected token of audience `vaultlet` written where its client reads it.
    pub fn app_on(&self, namespace: &str, service_account: &str, pod: &str, node: &str) -> App {
        ensure_namespace(&self.kube, namespace);
        if self.kube.get::<k8s_openapi::api::core::v1::ServiceAccount>(namespace, service_account).is_none() {
            self.kube.create_service_account(namespace, service_account).expect("service account");
        }
        let pod_uid = self.kube.create_pod(namespace, pod, node, service_account).expect("pod");
        let token = self
            .kube
            .mint_token(namespace, service_account, Some(pod), &["vaultlet"], Duration::from_secs(3600))
            .expect("app token");
        let token_file = self.dir.path().join(format!("token-{namespace}-{pod}"));
        std::fs::write(&token_file, format!("{token}\n")).expect("token file");
        App {
            namespace: namespace.into(),
            service_account: service_account.into(),
            pod: pod.into(),
            pod_uid,
            token_file,
        }
    }

    pub fn app(&self, namespace: &str, service_account: &str, pod: &str) -> App {
        self.app_on(namespace, service_account, pod, NODE)
    }

    /// `vaultlet ARGS` as an operator runs the tools: kubeconfig, Vault address and root token.
    pub fn vaultlet(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.tool(args);
        run_with_stdin(&mut cmd, stdin)
    }

    /// The command for `vaultlet ARGS` with the operator's environment.
    pub fn tool(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(vaultlet_bin());
        cmd.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("VAULT_ADDR", &self.bao.addr)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .env("VAULTLET_LOG", "warn");
        cmd
    }

    /// A client of the agent presenting `app`'s token.
    pub async fn client(&self, app: &App) -> vaultlet_client::Client {
        vaultlet_client::Client::connect(self.socket())
            .await
            .expect("connect to the agent")
            .with_token_source(vaultlet_client::TokenSource::File(app.token_file.clone()))
    }

    /// Waits until the agent serves `reference` to `app` (the agent sees a new
    /// Secret when its watch delivers it, a moment after the write). Needs an
    /// agent with peer binding off: this process is not in the app's pod.
    pub async fn wait_readable(&self, app: &App, reference: &str) {
        let client = self.client(app).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match client.get_secrets([reference]).await {
                Ok(_) => return,
                Err(e) if std::time::Instant::now() > deadline => panic!("{reference} not served within 10 s: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// `plaintext` encrypted under Transit `key`, bound to data key `data_key`
    /// of Secret `namespace/name` (as `vaultlet seal` would), with the root token.
    pub fn encrypt_for(&self, key: &str, namespace: &str, name: &str, data_key: &str, plaintext: &[u8]) -> String {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let place = format!("vaultlet/v1/{namespace}/{name}/{data_key}");
        let path = format!("transit/encrypt/{key}");
        let (plaintext, context) =
            (format!("plaintext={}", b64(plaintext)), format!("context={}", b64(place.as_bytes())));
        self.bao.must(&["write", "-field=ciphertext", &path, &plaintext, &context]).trim().to_owned()
    }

    /// Seals `document` (JSON) into `namespace/name` under `key`, readable by `allow`.
    pub fn seal(&self, namespace: &str, name: &str, key: &str, allow: &str, document: &str) {
        let out = self.vaultlet(
            &["seal", "--namespace", namespace, "--name", name, "--transit-key", key, "--allow", allow, "-"],
            Some(document.as_bytes()),
        );
        assert!(out.status.success(), "seal failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

fn openbao_setup(bao: &Bao, kube: &KubeApiServer, files: &StackFiles, keys: &[&str]) -> Output {
    Command::new(repo_root().join("deploy/openbao/setup.sh"))
        .env("VAULT_ADDR", &bao.addr)
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .env("VAULT_CLI", crate::bao::bao_bin())
        .env("KUBERNETES_HOST", kube.url())
        .env("KUBERNETES_CA_CERT", &files.ca)
        .env("TRANSIT_KEYS", keys.join(" "))
        .env("TOKEN_REVIEWER_JWT", &files.reviewer)
        .output()
        .expect("run deploy/openbao/setup.sh")
}

pub fn ensure_namespace(kube: &KubeApiServer, name: &str) {
    if kube.get::<Namespace>("", name).is_none() {
        kube.create_namespace(name).expect("namespace");
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_owned()
}

fn run_with_stdin(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start vaultlet");
    if let Some(bytes) = stdin {
        child.stdin.take().expect("stdin").write_all(bytes).expect("write stdin");
    }
    child.wait_with_output().expect("vaultlet output")
}

/// OpenBao's Kubernetes auth method wants a CA certificate even for an http://
/// API server, which never uses it; this is a self-signed one made for the tests.
const TEST_CA_PEM: &str = include_str!("../fixtures/kube-ca.pem");
