//! The whole production path on one machine: a real kube-apiserver and etcd
//! (`cluster`), with the objects and RBAC of `deploy/` applied; a real OpenBao
//! configured by `deploy/openbao/setup.sh` in the reviewer mode `deploy/`
//! documents; `vaultlet serve` as a separate process running as the `vaultlet`
//! ServiceAccount with its pod-bound tokens, over TLS; and the tools as their
//! own identities (`recrypt` as the CronJob's ServiceAccount, `seal` as an
//! operator bound to the `vaultlet-seal` ClusterRole).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::agent::{AgentProcess, vaultlet_bin};
use crate::bao::{Bao, ROOT_TOKEN};
use crate::cluster::{Cluster, render};

pub const AGENT_NAMESPACE: &str = "vaultlet-system";
pub const NODE: &str = "node-1";
pub const OTHER_NODE: &str = "node-2";
/// Audience of the agent's own token for the Vault login (deploy uses the same).
pub const VAULT_AUDIENCE: &str = "vault";
/// How long the tokens a test makes live (the API server's default is an hour).
const TOKEN_TTL: Duration = Duration::from_secs(3600);

pub struct Stack {
    pub kube: Cluster,
    pub bao: Bao,
    /// The operator's kubeconfig (`vaultlet-seal`), what `vaultlet` runs with.
    pub kubeconfig: PathBuf,
    agent_kubeconfig: PathBuf,
    agent_api_token: PathBuf,
    agent_token: PathBuf,
    recrypt_kubeconfig: PathBuf,
    recrypt_vault_token: PathBuf,
    files: StackFiles,
    admin_port: u16,
    /// Last: fields drop in order, and the servers above must stop before
    /// their directory goes.
    pub dir: tempfile::TempDir,
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
    /// Starts the control plane and OpenBao, applies `deploy/`, and configures
    /// OpenBao with the deploy script for Transit keys `keys`.
    pub async fn start(keys: &[&str]) -> Stack {
        Self::start_with(keys, &[]).await
    }

    /// `start`, with extra kube-apiserver flags.
    pub async fn start_with(keys: &[&str], apiserver_args: &[String]) -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let kube = Cluster::start(&dir.path().join("controlplane"), apiserver_args).await;
        let bao = Bao::start(dir.path());
        let deploy = render(&repo_root().join("deploy"), &["openbao/reviewer"]);
        kube.apply(&deploy).unwrap_or_else(|e| panic!("the API server refused deploy/: {e}"));
        for node in [NODE, OTHER_NODE] {
            kube.create_node(node).await;
        }

        // The agent as the DaemonSet runs it: its pod on node-1, a token for the
        // API server and one (audience vault) for its Vault login, both bound to it.
        kube.create_pod(AGENT_NAMESPACE, "vaultlet-agent", NODE, "vaultlet").await;
        // As kubelet writes them: no newline (kube-rs sends a token file as it is).
        let write = |name: &str, token: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, token).expect("token file");
            path
        };
        let agent_api = kube.token(AGENT_NAMESPACE, "vaultlet", Some("vaultlet-agent"), &[], TOKEN_TTL).await;
        let agent_api_token = write("agent-api-token", agent_api);
        let agent_kubeconfig = dir.path().join("agent.kubeconfig");
        kube.write_kubeconfig(&agent_kubeconfig, &agent_api_token, &kube.proxy_url());
        let agent_vault =
            kube.token(AGENT_NAMESPACE, "vaultlet", Some("vaultlet-agent"), &[VAULT_AUDIENCE], TOKEN_TTL).await;
        let agent_token = write("agent-token", agent_vault);

        // The recrypt CronJob's pod, and an operator who seals.
        kube.create_pod(AGENT_NAMESPACE, "vaultlet-recrypt-1", NODE, "vaultlet-recrypt").await;
        let recrypt_api =
            kube.token(AGENT_NAMESPACE, "vaultlet-recrypt", Some("vaultlet-recrypt-1"), &[], TOKEN_TTL).await;
        let recrypt_api = write("recrypt-api-token", recrypt_api);
        let recrypt_kubeconfig = dir.path().join("recrypt.kubeconfig");
        kube.write_kubeconfig(&recrypt_kubeconfig, &recrypt_api, kube.url());
        let recrypt_vault = kube
            .token(AGENT_NAMESPACE, "vaultlet-recrypt", Some("vaultlet-recrypt-1"), &[VAULT_AUDIENCE], TOKEN_TTL)
            .await;
        let recrypt_vault_token = write("recrypt-vault-token", recrypt_vault);
        let kubeconfig = dir.path().join("operator.kubeconfig");
        let operator = operator_token(&kube).await;
        kube.write_kubeconfig(&kubeconfig, &write("operator-token", operator), kube.url());

        // OpenBao runs outside the cluster: it reviews login tokens with the
        // reviewer's token, as the deploy guide describes.
        let reviewer = reviewer_token(&kube).await;
        let files = StackFiles { ca: kube.cp.ca_file(), reviewer: write("reviewer-token", reviewer) };
        let out = openbao_setup(&bao, &kube, &files, keys);
        assert!(
            out.status.success(),
            "setup.sh failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let admin_port = crate::bao::free_port();
        Stack {
            dir,
            kube,
            bao,
            kubeconfig,
            agent_kubeconfig,
            agent_api_token,
            agent_token,
            recrypt_kubeconfig,
            recrypt_vault_token,
            files,
            admin_port,
        }
    }

    /// Points the agent's kubeconfig at `https://127.0.0.1:{port}` (a front
    /// such as `LaggingCache`) instead of the cluster's proxy; before `start_agent`.
    pub fn route_agent_to(&self, port: u16) {
        let server = format!("https://127.0.0.1:{port}");
        self.kube.write_kubeconfig(&self.agent_kubeconfig, &self.agent_api_token, &server);
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
        self.start_agent_wrapped(&[], extra, level)
    }

    /// `start_agent_logging`, the agent run by `wrapper` (valgrind, say).
    pub fn start_agent_wrapped(&self, wrapper: &[&str], extra: &[&str], level: &str) -> AgentProcess {
        let args = self.serve_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [("KUBECONFIG", self.agent_kubeconfig.to_str().unwrap()), ("VAULTLET_LOG", level)];
        AgentProcess::launch_wrapped(wrapper, &args, &env, Some(&self.agent_log()), &self.socket())
    }

    /// A pod of `namespace` running as `service_account` on `node`, with a
    /// projected token of audience `vaultlet` written where its client reads it.
    pub async fn app_on(&self, namespace: &str, service_account: &str, pod: &str, node: &str) -> App {
        self.kube.ensure_service_account(namespace, service_account).await;
        let pod_uid = self.kube.create_pod(namespace, pod, node, service_account).await;
        let token = self.kube.token(namespace, service_account, Some(pod), &["vaultlet"], TOKEN_TTL).await;
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

    pub async fn app(&self, namespace: &str, service_account: &str, pod: &str) -> App {
        self.app_on(namespace, service_account, pod, NODE).await
    }

    /// `vaultlet ARGS` as an operator runs the tools: the operator's kubeconfig
    /// (`vaultlet-seal`), the Vault address and root token.
    pub fn vaultlet(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = self.tool(args);
        run_with_stdin(&mut cmd, stdin)
    }

    /// `vaultlet recrypt ARGS` as the CronJob runs it: its ServiceAccount's
    /// RBAC, and a Kubernetes-auth login to Vault as role `vaultlet-recrypt`.
    pub fn recrypt(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(vaultlet_bin());
        cmd.arg("recrypt")
            .args(args)
            .args(["--vault-auth-role", "vaultlet-recrypt", "--vault-auth-jwt-file"])
            .arg(&self.recrypt_vault_token)
            .env("KUBECONFIG", &self.recrypt_kubeconfig)
            .env("VAULT_ADDR", &self.bao.addr)
            .env_remove("VAULT_TOKEN")
            .env("VAULTLET_LOG", "warn");
        run_with_stdin(&mut cmd, None)
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
        self.wait_readable_within(app, reference, Duration::from_secs(10)).await;
    }

    /// `wait_readable` for an agent that takes longer to start (under valgrind, say).
    pub async fn wait_readable_within(&self, app: &App, reference: &str, within: Duration) {
        let deadline = std::time::Instant::now() + within;
        loop {
            // A new connection each time: an agent too slow to authenticate a
            // call closes a connection after its grace.
            let client = self.client(app).await;
            match client.get_secrets([reference]).await {
                Ok(_) => return,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("{reference} not served within {within:?}: {e}")
                }
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

/// A token of the operator: ServiceAccount `vaultlet-system/operator`, bound to
/// the `vaultlet-seal` ClusterRole of `deploy/`.
async fn operator_token(kube: &Cluster) -> String {
    kube.ensure_service_account(AGENT_NAMESPACE, "operator").await;
    let binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {{name: test-operator}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: vaultlet-seal}}\n\
         subjects: [{{kind: ServiceAccount, name: operator, namespace: {AGENT_NAMESPACE}}}]\n"
    );
    kube.apply(&binding).expect("bind the operator");
    kube.token(AGENT_NAMESPACE, "operator", None, &[], TOKEN_TTL).await
}

/// The reviewer's token: the API server's token controller would fill the
/// `openbao-reviewer-token` Secret (a controller these tests do not run); a
/// token bound to that Secret lives and dies with it just the same.
async fn reviewer_token(kube: &Cluster) -> String {
    use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
    use k8s_openapi::api::core::v1::ServiceAccount;
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(86400),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Secret".into()),
                name: Some("openbao-reviewer-token".into()),
                uid: None,
            }),
        },
        ..TokenRequest::default()
    };
    let api: kube::Api<ServiceAccount> = kube::Api::namespaced(kube.admin(), AGENT_NAMESPACE);
    let answer: TokenRequest = api
        .create_subresource("token", "openbao-reviewer", &Default::default(), &request)
        .await
        .expect("the reviewer's token");
    answer.status.expect("a token").token
}

fn openbao_setup(bao: &Bao, kube: &Cluster, files: &StackFiles, keys: &[&str]) -> Output {
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
