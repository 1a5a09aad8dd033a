//! `deploy/` against a real API server: its objects accepted as they are (with
//! the admission plugins a cluster runs, PodSecurity among them), and its RBAC
//! exactly what the agent and the tools need: a verb less fails.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use vaultlet_client::Code;
use vaultlet_tests::cluster::render;
use vaultlet_tests::stack::{Stack, repo_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_manifests_are_accepted_and_pod_security_is_enforced() {
    let stack = Stack::start(&["shop"]).await;
    // deploy/ itself was applied by the stack; the examples too, as they are.
    let examples = render(&repo_root().join("deploy/examples"), &[]);
    stack.kube.apply(&examples).unwrap_or_else(|e| panic!("the API server refused deploy/examples: {e}"));

    // The level a namespace declares is enforced: a hostPath pod in a
    // namespace that enforces restricted is refused.
    stack.kube.apply(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: strict\n  labels: {pod-security.kubernetes.io/enforce: restricted}\n",
    )
    .unwrap();
    stack.kube.ensure_service_account("strict", "app").await;
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "host", "namespace": "strict"},
        "spec": {
            "serviceAccountName": "app",
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10",
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "socket", "mountPath": "/run/vaultlet"}]}],
            "volumes": [{"name": "socket", "hostPath": {"path": "/run/vaultlet"}}]
        }
    }))
    .unwrap();
    let err = stack.kube.create(pod).await.unwrap_err().to_string();
    assert!(err.contains("violates PodSecurity") && err.contains("hostPath"), "{err}");
}

/// `deploy/` rendered (the stack applies it so), with `verb` taken out of the
/// rule of ClusterRole `role` for `resource`.
fn without_verb(role: &str, resource: &str, verb: &str) -> String {
    let rendered = render(&repo_root().join("deploy"), &["openbao/reviewer"]);
    let role_at = rendered.find(&format!("  name: {role}\nrules:\n")).unwrap_or_else(|| panic!("no role {role}"));
    let rule = format!("  - {resource}\n  verbs:\n");
    let verbs_at =
        role_at + rendered[role_at..].find(&rule).unwrap_or_else(|| panic!("{role}: no rule for {resource}"));
    let list_at = verbs_at + rule.len();
    let list_len =
        rendered[list_at..].lines().take_while(|l| l.starts_with("  - ")).map(|l| l.len() + 1).sum::<usize>();
    let list = &rendered[list_at..list_at + list_len];
    let mut kept: String = list.lines().filter(|l| l.trim() != format!("- {verb}")).map(|l| format!("{l}\n")).collect();
    assert_ne!(kept, list, "{role} does not grant {verb} on {resource}");
    if kept.is_empty() {
        // A rule must name a verb: one the code never uses on that resource.
        kept = "  - deletecollection\n".into();
    }
    format!("{}{kept}{}", &rendered[..list_at], &rendered[list_at + list_len..])
}

/// Applies `deploy/` with one verb less; `deploy/` as it is again when dropped.
struct VerbDropped<'a>(&'a Stack);

impl<'a> VerbDropped<'a> {
    fn apply(stack: &'a Stack, role: &str, resource: &str, verb: &str) -> VerbDropped<'a> {
        stack.kube.apply(&without_verb(role, resource, verb)).expect("apply deploy/ with a verb less");
        // The authorizer follows RBAC objects through a watch.
        std::thread::sleep(Duration::from_secs(1));
        VerbDropped(stack)
    }
}

impl Drop for VerbDropped<'_> {
    fn drop(&mut self) {
        let full = render(&repo_root().join("deploy"), &["openbao/reviewer"]);
        self.0.kube.apply(&full).expect("apply deploy/ again");
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Every verb `deploy/rbac.yaml` grants is one the code needs: take one
/// away and something fails, with the API server's `forbidden` in the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_verb_of_deploy_rbac_is_needed() {
    let stack = Stack::start(&["shop"]).await;
    let web = stack.app("shop", "web", "web-1").await;
    stack.seal("shop", "db", "shop", "web", r#"{"k":"v"}"#);

    // vaultlet-agent, list Secrets: its watch cannot start, the agent never gets ready.
    {
        let _less = VerbDropped::apply(&stack, "vaultlet-agent", "secrets", "list");
        let mut agent = stack.start_agent(&["--peer-binding", "off"]);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let (status, why) = stack.admin_get("/readyz");
        assert_eq!(status, 503, "{why}");
        assert!(why.contains("has not listed"), "{why}");
        let err = stack.client(&web).await.get_secrets(["db"]).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        agent.kill();
    }
    let log = std::fs::read_to_string(stack.agent_log()).unwrap();
    assert!(log.contains("forbidden"), "the agent's log says why");

    // vaultlet-agent, watch Secrets: it lists once and never sees a change.
    {
        let _less = VerbDropped::apply(&stack, "vaultlet-agent", "secrets", "watch");
        let mut agent = stack.start_agent(&["--peer-binding", "off"]);
        stack.wait_readable(&web, "db").await;
        stack.seal("shop", "later", "shop", "web", r#"{"k":"v"}"#);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let err = stack.client(&web).await.get_secrets(["later"]).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "never seen: {err}");
        agent.kill();
    }

    // vaultlet-agent, get Secrets: it knows of them, but cannot read their data.
    {
        let _less = VerbDropped::apply(&stack, "vaultlet-agent", "secrets", "get");
        let mut agent = stack.start_agent(&["--peer-binding", "off"]);
        let client = stack.client(&web).await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let err = loop {
            let err = client.get_secrets(["db"]).await.unwrap_err();
            if err.to_string().contains("forbidden") || std::time::Instant::now() > deadline {
                break err;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.to_string().contains("may not get Secrets"), "{err}");
        agent.kill();
    }

    // vaultlet-agent, create TokenReviews: no caller can be authenticated.
    {
        let _less = VerbDropped::apply(&stack, "vaultlet-agent", "tokenreviews", "create");
        let mut agent = stack.start_agent(&["--peer-binding", "off"]);
        let err = stack.client(&web).await.get_secrets(["db"]).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err}");
        assert!(err.to_string().contains("forbidden"), "{err}");
        agent.kill();
    }

    // vaultlet-recrypt, update Secrets: it cannot write the rewrapped data back.
    {
        let _less = VerbDropped::apply(&stack, "vaultlet-recrypt", "secrets", "update");
        let out = stack.recrypt(&["--namespace", "shop"]);
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && report.contains("forbidden"), "{report}");
    }
    let out = stack.recrypt(&["--namespace", "shop"]);
    assert!(out.status.success(), "with its role whole: {}", String::from_utf8_lossy(&out.stdout));

    // vaultlet-seal, create Secrets: an operator cannot seal a new one.
    {
        let _less = VerbDropped::apply(&stack, "vaultlet-seal", "secrets", "create");
        let args = ["seal", "-n", "shop", "--name", "new", "--transit-key", "shop", "--allow", "web", "-"];
        let out = stack.vaultlet(&args, Some(br#"{"k":"v"}"#));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("forbidden"), "{err}");
    }
}
