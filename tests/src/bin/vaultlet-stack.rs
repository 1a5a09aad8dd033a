//! `vaultlet-stack`: the whole production path on this machine: a real
//! kube-apiserver and etcd, a real OpenBao configured by deploy/openbao/setup.sh,
//! `vaultlet serve`, and a sealed Secret `shop/db` readable by service account
//! `shop/web`.
//!
//! By hand (no flag): a client watches the Secret while the key is rotated
//! (`vaultlet recrypt`) and the content re-sealed, every event printed; then it
//! keeps running, with lines to paste, until Ctrl-C.
//!
//! For other test suites (`--info-out FILE`): it writes where everything is as
//! JSON to FILE once the agent serves the Secret, and runs until SIGTERM.
//! `vaultlet-stack token ...` then signs a token for them with the cluster's
//! key (the API server issues none that expires within ten minutes).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use secrecy::ExposeSecret;
use serde_json::json;
use vaultlet_client::{Client, TokenSource};
use vaultlet_tests::bao::ROOT_TOKEN;
use vaultlet_tests::cluster::{Cluster, SignedToken};
use vaultlet_tests::stack::{App, Stack};

#[derive(Parser)]
#[command(about = "The full vaultlet stack on this machine (kube-apiserver and etcd, OpenBao, agent)")]
struct Args {
    /// Write the stack's addresses and files as JSON here, then run until SIGTERM.
    #[arg(long, value_name = "FILE")]
    info_out: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Tool>,
}

#[derive(clap::Subcommand)]
enum Tool {
    /// Print a pod-bound token (audience vaultlet) signed with the key of the
    /// control plane in DIR, expiring in SECONDS.
    Token {
        #[arg(long, value_name = "DIR")]
        controlplane: PathBuf,
        #[arg(long)]
        namespace: String,
        #[arg(long)]
        service_account: String,
        #[arg(long)]
        pod: String,
        #[arg(long, value_name = "SECONDS")]
        expires_in: i64,
    },
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(Tool::Token { controlplane, namespace, service_account, pod, expires_in }) = args.command {
        vaultlet::cli::install_crypto_provider();
        let cluster = Cluster::attach(&controlplane).await;
        let token = SignedToken {
            namespace: &namespace,
            service_account: &service_account,
            pod: Some(&pod),
            audiences: &["vaultlet"],
            expires_in,
            node_info: true,
        };
        println!("{}", cluster.sign_token(token).await);
        return;
    }
    if args.info_out.is_none() {
        println!("starting kube-apiserver, etcd and OpenBao...");
    }
    let stack = Stack::start(&["shop"]).await;
    // The caller is not in a pod here, so peer binding would refuse it: warn instead.
    let _agent = stack.start_agent(&["--peer-binding", "warn"]);
    let web = stack.app("shop", "web", "web-1").await;
    let worker = stack.app("shop", "worker", "worker-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"user":"shop","password":"first-password"}"#);
    stack.wait_readable(&web, "db").await;

    match args.info_out {
        Some(path) => serve_for_tests(&stack, &web, &worker, &path).await,
        None => tour(&stack, &web).await,
    }
}

async fn serve_for_tests(stack: &Stack, web: &App, worker: &App, path: &std::path::Path) {
    let info = json!({
        "socket": stack.socket(),
        "kubeconfig": stack.kubeconfig,
        "vault_addr": stack.bao.addr,
        "vault_token": ROOT_TOKEN,
        "namespace": "shop",
        "secret": "db",
        "transit_key": "shop",
        "tokens": { "web": web.token_file, "worker": worker.token_file },
        "controlplane": stack.kube.cp.dir,
        "audit_log": stack.audit_log(),
    });
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, info.to_string()).expect("write the info file");
    std::fs::rename(&tmp, path).expect("publish the info file");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn tour(stack: &Stack, web: &App) {
    println!("sealed shop/db (transit key `shop`, readable by serviceaccount shop/web)\n");
    let client = Client::connect(stack.socket())
        .await
        .expect("connect")
        .with_token_source(TokenSource::File(web.token_file.clone()));
    let mut events = client.watch(["db"]).expect("watch");
    let printer = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                Ok(e) => {
                    let values: Vec<String> =
                        e.secret.values.iter().map(|(k, v)| format!("{k}={}", v.expose_secret())).collect();
                    println!(
                        "  event {:<15} revision {:<4} key v{}  {}",
                        e.kind.as_str(),
                        e.secret.revision,
                        e.secret.key_version,
                        values.join(" ")
                    );
                }
                Err(e) => println!("  watch ended: {e}"),
            }
        }
    });
    let pause = || tokio::time::sleep(Duration::from_millis(800));
    pause().await;

    println!("\n$ vaultlet recrypt --namespace shop     (rotate the key, rewrap inside OpenBao)");
    print_output(stack.recrypt(&["--namespace", "shop"]));
    pause().await;
    println!("\n$ vaultlet seal ... (new content)");
    stack.seal("shop", "db", "shop", "web", r#"{"user":"shop","password":"second-password"}"#);
    pause().await;

    let socket = stack.socket();
    println!("\nThe stack keeps running; in another shell:");
    println!(
        "  export KUBECONFIG={} VAULT_ADDR={} VAULT_TOKEN={ROOT_TOKEN}",
        stack.kubeconfig.display(),
        stack.bao.addr
    );
    println!("  target/debug/vaultlet get --socket {} --token-file {} db", socket.display(), web.token_file.display());
    println!(
        "  target/debug/vaultlet watch --socket {} --token-file {} db",
        socket.display(),
        web.token_file.display()
    );
    println!("  target/debug/vaultlet recrypt --namespace shop     # as an operator (vaultlet-seal)");
    println!("  kubectl get secret -n shop db -o yaml     # only vault:vN: ciphertext");
    println!("  (administrator: KUBECONFIG={})", stack.kube.admin_kubeconfig().display());
    println!("  (the agent's log: {}; its audit log: {})", stack.agent_log().display(), stack.audit_log().display());
    println!("Ctrl-C stops everything.");
    let _ = tokio::signal::ctrl_c().await;
    printer.abort();
}

fn print_output(out: std::process::Output) {
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}
