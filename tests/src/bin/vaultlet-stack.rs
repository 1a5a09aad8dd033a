//! `vaultlet-stack`: the whole production path on this machine, to try by hand:
//! the Kubernetes API test server, a real OpenBao configured by
//! deploy/openbao/setup.sh, `vaultlet serve`, a sealed Secret, a client
//! watching it, then a key rotation (`vaultlet recrypt`) and an edit, with
//! every event printed. Then it keeps running, with lines to paste, until Ctrl-C.

use std::time::Duration;

use futures::StreamExt;
use secrecy::ExposeSecret;
use vaultlet_client::{Client, TokenSource};
use vaultlet_tests::stack::Stack;

#[tokio::main]
async fn main() {
    println!("starting the Kubernetes API test server and OpenBao...");
    let stack = Stack::start(&["shop"]).await;
    // This shell is not a pod, so peer binding would refuse it: warn instead.
    let _agent = stack.start_agent(&["--peer-binding", "warn"]);
    let web = stack.app("shop", "web", "web-1");
    stack.seal("shop", "db", "shop", "web", r#"{"user":"shop","password":"first-password"}"#);
    println!("sealed shop/db (transit key `shop`, readable by serviceaccount shop/web)\n");
    stack.wait_readable(&web, "db").await;

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
    print_output(stack.vaultlet(&["recrypt", "--namespace", "shop"], None));
    pause().await;
    println!("\n$ vaultlet seal ... (new content)");
    stack.seal("shop", "db", "shop", "web", r#"{"user":"shop","password":"second-password"}"#);
    pause().await;

    let socket = stack.socket();
    println!("\nThe stack keeps running; in another shell:");
    println!("  export KUBECONFIG={} VAULT_ADDR={} VAULT_TOKEN=root", stack.kubeconfig.display(), stack.bao.addr);
    println!("  target/debug/vaultlet get --socket {} --token-file {} db", socket.display(), web.token_file.display());
    println!(
        "  target/debug/vaultlet watch --socket {} --token-file {} db",
        socket.display(),
        web.token_file.display()
    );
    println!("  target/debug/vaultlet recrypt --namespace shop");
    println!("  kubectl get secret -n shop db -o yaml     # only vault:vN: ciphertext");
    println!("  (the agent's log: {}; its audit log: {})", stack.agent_log().display(), stack.audit_log().display());
    println!("Ctrl-C stops everything.");
    let _ = tokio::signal::ctrl_c().await;
    printer.abort();
}

fn print_output(out: std::process::Output) {
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}
