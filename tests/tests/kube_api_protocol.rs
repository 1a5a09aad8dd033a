//! The wire protocol of the test API server, request by request: what it answers, what
//! it refuses and how (codes, reasons, Status bodies), watch streams, and fault hooks.

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;
use vaultlet_tests::kube_api::{KubeApiServer, Options};

const WAIT: Duration = Duration::from_secs(10);
const JSON: &str = "application/json";

struct Api {
    server: KubeApiServer,
    client: kube::Client,
}

async fn start() -> Api {
    let server = KubeApiServer::start(Options::default()).await.expect("server starts");
    server.create_namespace("shop").expect("namespace");
    // No credentials at all: the administrator, as kubectl over plain http.
    let mut config = kube::Config::new(server.url().parse().expect("URL"));
    // Every answer as sent: no retries of 504s behind the test's back.
    config.default_retry = false;
    let client = kube::Client::try_from(config).expect("client");
    Api { server, client }
}

fn request(method: &str, path: &str, content_type: &str, body: Vec<u8>) -> http::Request<Body> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Body::from(body))
        .expect("request")
}

impl Api {
    /// Sends a request and returns the code and the JSON body.
    async fn call(&self, method: &str, path: &str, content_type: &str, body: Value) -> (u16, Value) {
        let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
        self.raw(request(method, path, content_type, bytes)).await
    }

    async fn raw(&self, request: http::Request<Body>) -> (u16, Value) {
        let response = self.client.send(request).await.expect("an HTTP answer");
        let code = response.status().as_u16();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (code, serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call("GET", path, JSON, Value::Null).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, JSON, body).await
    }

    /// Opens a watch; each line arrives parsed on the channel, which closes with the stream.
    async fn watch(&self, path: &str) -> mpsc::UnboundedReceiver<Value> {
        let response = self.client.send(request("GET", path, JSON, Vec::new())).await.expect("watch answered");
        assert_eq!(response.status().as_u16(), 200, "a watch answers 200");
        let (tx, rx) = mpsc::unbounded_channel();
        let mut body = response.into_body();
        tokio::spawn(async move {
            let mut buffer = Vec::new();
            while let Some(Ok(frame)) = body.frame().await {
                buffer.extend_from_slice(frame.data_ref().map(|d| d.as_ref()).unwrap_or_default());
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=end).collect();
                    if tx.send(serde_json::from_slice(&line).expect("each line is one JSON event")).is_err() {
                        return;
                    }
                }
            }
        });
        rx
    }
}

fn secret(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "labels": labels}, "data": {"k": "djE="}})
}

fn assert_status(answer: &(u16, Value), code: u16, reason: &str) {
    let (got, body) = answer;
    assert_eq!(*got, code, "{body}");
    assert_eq!(body["kind"], "Status", "{body}");
    assert_eq!(body["apiVersion"], "v1", "{body}");
    assert_eq!(body["status"], "Failure", "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    assert_eq!(body["code"], code, "{body}");
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    timeout(WAIT, rx.recv()).await.expect("a watch event in time").expect("the watch is still open")
}

/// The next event that is not a BOOKMARK.
async fn next_change(rx: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    loop {
        let event = next(rx).await;
        if event["type"] != "BOOKMARK" {
            return event;
        }
    }
}

const SECRETS: &str = "/api/v1/namespaces/shop/secrets";

#[tokio::test]
async fn refusals_are_status_objects_with_the_real_codes() {
    let api = start().await;
    let missing = api.get(&format!("{SECRETS}/nope")).await;
    assert_status(&missing, 404, "NotFound");
    assert_eq!(missing.1["message"], "secrets \"nope\" not found");
    assert_eq!(missing.1["details"], json!({"name": "nope", "kind": "secrets"}));
    assert_status(&api.get("/api/v1/configmaps").await, 404, "NotFound");
    assert_status(&api.get("/apis/apps/v1").await, 404, "NotFound");

    assert_eq!(api.post(SECRETS, secret("db", json!({}))).await.0, 201);
    assert_status(&api.post(SECRETS, secret("db", json!({}))).await, 409, "AlreadyExists");

    let bad_name = api.post(SECRETS, secret("Bad_Name", json!({}))).await;
    assert_status(&bad_name, 422, "Invalid");
    assert_eq!(bad_name.1["details"]["causes"][0]["field"], "metadata.name");
    assert_eq!(bad_name.1["details"]["kind"], "Secret");
    let bad_label = api.post(SECRETS, secret("ok", json!({"bad key": "x"}))).await;
    assert_status(&bad_label, 422, "Invalid");
    let no_name = api.post(SECRETS, json!({"metadata": {}})).await;
    assert_status(&no_name, 422, "Invalid");
    let generated = api.post(SECRETS, json!({"metadata": {"generateName": "gen-"}})).await;
    assert_eq!(generated.0, 201);
    assert!(generated.1["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("gen-") && n.len() == 9));

    let bad_base64 = api.post(SECRETS, json!({"metadata": {"name": "b64"}, "data": {"k": "not base64!"}})).await;
    assert_status(&bad_base64, 400, "BadRequest");
    let bad_key = api.post(SECRETS, json!({"metadata": {"name": "key"}, "data": {"no/slash": ""}})).await;
    assert_status(&bad_key, 422, "Invalid");
    let tls = api.post(SECRETS, json!({"metadata": {"name": "tls"}, "type": "kubernetes.io/tls", "data": {}})).await;
    assert_status(&tls, 422, "Invalid");
    let kind_mismatch = api.post(SECRETS, json!({"kind": "ConfigMap", "metadata": {"name": "cm"}})).await;
    assert_status(&kind_mismatch, 400, "BadRequest");
    let ns_mismatch = api.post(SECRETS, json!({"metadata": {"name": "x", "namespace": "other"}})).await;
    assert_status(&ns_mismatch, 400, "BadRequest");
    let with_version = api.post(SECRETS, json!({"metadata": {"name": "rv", "resourceVersion": "5"}})).await;
    assert_status(&with_version, 500, "InternalError");
    assert_status(&api.post("/api/v1/namespaces/absent/secrets", secret("x", json!({}))).await, 404, "NotFound");
    assert_status(&api.post("/api/v1/secrets", secret("x", json!({}))).await, 405, "MethodNotAllowed");
    assert_status(&api.call("POST", SECRETS, JSON, Value::String("{".into())).await, 400, "BadRequest");

    // What typed kubectl commands send: protobuf. Refused with a Status, in JSON.
    let protobuf =
        api.raw(request("POST", SECRETS, "application/vnd.kubernetes.protobuf", b"k8s\0junk".to_vec())).await;
    assert_status(&protobuf, 415, "UnsupportedMediaType");
    let only_protobuf = http::Request::get(SECRETS)
        .header(http::header::ACCEPT, "application/vnd.kubernetes.protobuf")
        .body(Body::empty())
        .expect("request");
    assert_status(&api.raw(only_protobuf).await, 406, "NotAcceptable");

    assert_status(&api.get(&format!("{SECRETS}?labelSelector=bad%20key%3Dx")).await, 400, "BadRequest");
    assert_status(&api.get(&format!("{SECRETS}?fieldSelector=spec.nodeName%3Dn1")).await, 400, "BadRequest");

    let pods = "/api/v1/namespaces/shop/pods";
    let no_containers = api.post(pods, json!({"metadata": {"name": "p"}, "spec": {"containers": []}})).await;
    assert_status(&no_containers, 422, "Invalid");
    let pod = json!({"metadata": {"name": "p"}, "spec": {"serviceAccountName": "ghost", "containers": [{"name": "c", "image": "i"}]}});
    assert_status(&api.post(pods, pod).await, 403, "Forbidden");
    api.server.shutdown().await;
}

#[tokio::test]
async fn updates_patches_and_deletes_follow_the_api_rules() {
    let api = start().await;
    let (_, created) = api.post(SECRETS, secret("db", json!({"app": "web"}))).await;
    let uid = created["metadata"]["uid"].clone();
    let path = format!("{SECRETS}/db");

    let mut stale = created.clone();
    stale["data"]["k"] = json!("djI=");
    assert_eq!(api.call("PUT", &path, JSON, stale.clone()).await.0, 200);
    assert_status(&api.call("PUT", &path, JSON, stale).await, 409, "Conflict");
    let mut renamed = created.clone();
    renamed["metadata"]["name"] = json!("other");
    renamed["metadata"]["resourceVersion"] = Value::Null;
    assert_status(&api.call("PUT", &path, JSON, renamed).await, 400, "BadRequest");
    let mut absent = secret("absent", json!({}));
    absent["metadata"]["namespace"] = json!("shop");
    assert_status(&api.call("PUT", &format!("{SECRETS}/absent"), JSON, absent).await, 404, "NotFound");

    // An update that changes nothing keeps its version, as with etcd.
    let (_, current) = api.get(&path).await;
    let (_, same) = api.call("PUT", &path, JSON, current.clone()).await;
    assert_eq!(same["metadata"]["resourceVersion"], current["metadata"]["resourceVersion"]);

    let merge = "application/merge-patch+json";
    let (code, patched) = api.call("PATCH", &path, merge, json!({"stringData": {"k": "v3"}})).await;
    assert_eq!(code, 200, "{patched}");
    assert_eq!(patched["data"]["k"], "djM=");
    assert!(patched.get("stringData").is_none());
    let strategic = "application/strategic-merge-patch+json";
    let (code, patched) = api.call("PATCH", &path, strategic, json!({"metadata": {"labels": {"app": null}}})).await;
    assert_eq!(code, 200, "{patched}");
    assert!(patched["metadata"].get("labels").is_none() || patched["metadata"]["labels"].get("app").is_none());
    let directive = api.call("PATCH", &path, strategic, json!({"metadata": {"$patch": "replace"}})).await;
    assert_status(&directive, 400, "BadRequest");
    let json_patch = "application/json-patch+json";
    let ops = json!([{"op": "add", "path": "/metadata/labels", "value": {"tier": "gold"}}]);
    let (code, patched) = api.call("PATCH", &path, json_patch, ops).await;
    assert_eq!((code, &patched["metadata"]["labels"]["tier"]), (200, &json!("gold")));
    let failing = json!([{"op": "test", "path": "/metadata/labels/tier", "value": "silver"}]);
    assert_status(&api.call("PATCH", &path, json_patch, failing).await, 422, "Invalid");
    let stale_rv = json!({"metadata": {"resourceVersion": "1"}});
    assert_status(&api.call("PATCH", &path, merge, stale_rv).await, 409, "Conflict");
    assert_status(&api.call("PATCH", &path, JSON, json!({})).await, 415, "UnsupportedMediaType");
    assert_status(&api.call("PATCH", &format!("{SECRETS}/nope"), merge, json!({})).await, 404, "NotFound");
    let change_type = json!({"type": "kubernetes.io/basic-auth", "data": {"username": "dQ=="}});
    assert_status(&api.call("PATCH", &path, merge, change_type).await, 422, "Invalid");
    let immutable = json!({"immutable": true});
    assert_eq!(api.call("PATCH", &path, merge, immutable).await.0, 200);
    assert_status(&api.call("PATCH", &path, merge, json!({"data": {"k": "eA=="}})).await, 422, "Invalid");

    let wrong_uid = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": "0000"}});
    assert_status(&api.call("DELETE", &path, JSON, wrong_uid).await, 409, "Conflict");
    let policy = json!({"propagationPolicy": "Sometimes"});
    assert_status(&api.call("DELETE", &path, JSON, policy).await, 422, "Invalid");
    let dry = api.call("DELETE", &format!("{path}?dryRun=All"), JSON, Value::Null).await;
    assert_eq!(dry.0, 200);
    assert_eq!(api.get(&path).await.0, 200, "a dry run deletes nothing");
    let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background", "preconditions": {"uid": uid}});
    let (code, deleted) = api.call("DELETE", &path, JSON, options).await;
    assert_eq!(code, 200);
    assert_eq!((&deleted["kind"], &deleted["status"]), (&json!("Status"), &json!("Success")));
    assert_eq!(deleted["details"], json!({"name": "db", "kind": "secrets", "uid": uid}));
    assert_status(&api.call("DELETE", &path, JSON, Value::Null).await, 404, "NotFound");

    // Pods: the kubelet owns status, and the spec is all but fixed.
    let pods = "/api/v1/namespaces/shop/pods";
    let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}, "status": {"phase": "Running"}});
    let (code, created) = api.post(pods, pod).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["status"]["phase"], "Pending");
    assert_eq!(created["spec"]["serviceAccountName"], "default");
    let image = json!({"spec": {"containers": [{"name": "c", "image": "i:2"}]}});
    assert_eq!(api.call("PATCH", &format!("{pods}/p"), merge, image).await.0, 200);
    let node = json!({"spec": {"nodeName": "n9"}});
    assert_status(&api.call("PATCH", &format!("{pods}/p"), merge, node).await, 422, "Invalid");
    let (code, deleted) = api.call("DELETE", &format!("{pods}/p"), JSON, Value::Null).await;
    assert_eq!((code, &deleted["kind"]), (200, &json!("Pod")), "a pod delete answers with the pod");
    api.server.shutdown().await;
}

#[tokio::test]
async fn lists_filter_by_labels_fields_and_namespace() {
    let api = start().await;
    api.server.create_namespace("other").expect("namespace");
    for (name, labels) in [("a", json!({"app": "web", "tier": "1"})), ("b", json!({"app": "db"})), ("c", json!({}))] {
        assert_eq!(api.post(SECRETS, secret(name, labels)).await.0, 201);
    }
    assert_eq!(api.post("/api/v1/namespaces/other/secrets", secret("d", json!({"app": "web"}))).await.0, 201);
    let names = |list: &Value| -> Vec<String> {
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["metadata"]["name"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    let select = |q: &str| format!("{SECRETS}?labelSelector={q}");
    let cases = [
        ("app%3Dweb", vec!["a"]),
        ("app%3D%3Dweb", vec!["a"]),
        ("app!%3Dweb", vec!["b", "c"]),
        ("app%20in%20(web,db)", vec!["a", "b"]),
        ("app%20notin%20(web)", vec!["b", "c"]),
        ("tier", vec!["a"]),
        ("!app", vec!["c"]),
        ("app,tier%3D1", vec!["a"]),
    ];
    for (query, expected) in cases {
        let (code, list) = api.get(&select(query)).await;
        assert_eq!(code, 200, "{list}");
        assert_eq!(names(&list), expected, "labelSelector={query}");
    }
    let (_, list) = api.get(SECRETS).await;
    assert_eq!(list["kind"], "SecretList");
    let version: u64 = list["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("integer");
    assert_eq!(version, api.server.resource_version());
    // In etcd key order: namespace, then name.
    assert_eq!(names(&api.get("/api/v1/secrets?labelSelector=app%3Dweb").await.1), ["d", "a"]);
    assert_eq!(names(&api.get(&format!("{SECRETS}?fieldSelector=metadata.name!%3Da")).await.1), ["b", "c"]);
    assert_eq!(names(&api.get("/api/v1/secrets?fieldSelector=metadata.namespace%3Dother").await.1), ["d"]);
    // limit and continue are accepted; everything comes in one page.
    assert_eq!(names(&api.get(&format!("{SECRETS}?limit=1")).await.1).len(), 3);
    let exact_old = api.get(&format!("{SECRETS}?resourceVersion=2&resourceVersionMatch=Exact")).await;
    assert_status(&exact_old, 410, "Expired");
    let future = api.get(&format!("{SECRETS}?resourceVersion={}", version + 100)).await;
    assert_status(&future, 504, "Timeout");

    api.server.create_pod("shop", "p1", "n1", "default").expect("pod");
    api.server.create_pod("shop", "p2", "n2", "default").expect("pod");
    let on_n1 = api.get("/api/v1/pods?fieldSelector=spec.nodeName%3Dn1").await;
    assert_eq!(names(&on_n1.1), ["p1"]);
    let running =
        api.get("/api/v1/namespaces/shop/pods?fieldSelector=status.phase%3DRunning,spec.nodeName!%3Dn1").await;
    assert_eq!(names(&running.1), ["p2"]);
    api.server.shutdown().await;
}

#[tokio::test]
async fn watches_stream_changes_bookmarks_and_gone() {
    let api = start().await;
    assert_eq!(api.post(SECRETS, secret("before", json!({"app": "web"}))).await.0, 201);
    let start_version = api.server.resource_version();

    // From "0": the current objects first, as synthetic ADDED events.
    let mut from_zero = api.watch(&format!("{SECRETS}?watch=true&resourceVersion=0")).await;
    let first = next_change(&mut from_zero).await;
    assert_eq!((&first["type"], &first["object"]["metadata"]["name"]), (&json!("ADDED"), &json!("before")));

    let mut watch = api
        .watch(&format!(
            "{SECRETS}?watch=1&resourceVersion={start_version}&labelSelector=app%3Dweb&allowWatchBookmarks=true"
        ))
        .await;
    assert_eq!(api.post(SECRETS, secret("s", json!({"app": "web"}))).await.0, 201);
    assert_eq!(api.post(SECRETS, secret("ignored", json!({"app": "db"}))).await.0, 201);
    let merge = "application/merge-patch+json";
    api.call("PATCH", &format!("{SECRETS}/s"), merge, json!({"data": {"k": "djI="}})).await;
    api.call("PATCH", &format!("{SECRETS}/s"), merge, json!({"metadata": {"labels": {"app": "none"}}})).await;
    api.call("PATCH", &format!("{SECRETS}/ignored"), merge, json!({"metadata": {"labels": {"app": "web"}}})).await;
    api.call("DELETE", &format!("{SECRETS}/ignored"), JSON, Value::Null).await;

    let mut versions = Vec::new();
    for (kind, name) in
        [("ADDED", "s"), ("MODIFIED", "s"), ("DELETED", "s"), ("ADDED", "ignored"), ("DELETED", "ignored")]
    {
        let event = next_change(&mut watch).await;
        assert_eq!(
            (event["type"].as_str(), event["object"]["metadata"]["name"].as_str()),
            (Some(kind), Some(name)),
            "{event}"
        );
        assert_eq!(event["object"]["kind"], "Secret");
        versions.push(
            event["object"]["metadata"]["resourceVersion"].as_str().expect("rv").parse::<u64>().expect("integer"),
        );
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "versions increase: {versions:?}");

    // Bookmarks: kind, apiVersion and the version only.
    let bookmark = loop {
        let event = next(&mut watch).await;
        if event["type"] == "BOOKMARK" {
            break event;
        }
    };
    assert_eq!(bookmark["object"]["kind"], "Secret");
    assert_eq!(bookmark["object"]["apiVersion"], "v1");
    let marked: u64 = bookmark["object"]["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("int");
    assert_eq!(marked, api.server.resource_version());
    assert!(bookmark["object"].get("data").is_none());

    // A version older than the history: 200, then one ERROR event with 410 Expired.
    api.server.faults().expire_history();
    let mut gone = api.watch(&format!("{SECRETS}?watch=true&resourceVersion={start_version}")).await;
    let error = next(&mut gone).await;
    assert_eq!(error["type"], "ERROR");
    assert_eq!((&error["object"]["code"], &error["object"]["reason"]), (&json!(410), &json!("Expired")));
    assert!(timeout(WAIT, gone.recv()).await.expect("closed in time").is_none(), "the stream ends after the error");

    // The current version is still fine, and timeoutSeconds ends the stream.
    let now = api.server.resource_version();
    let mut short = api.watch(&format!("{SECRETS}?watch=true&resourceVersion={now}&timeoutSeconds=1")).await;
    assert!(timeout(WAIT, short.recv()).await.expect("closed in time").is_none());

    let initial_events =
        api.get(&format!("{SECRETS}?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan")).await;
    assert_status(&initial_events, 422, "Invalid");

    // Dropped by the fault hook: the connection just ends.
    api.server.faults().drop_watches();
    assert!(timeout(WAIT, async { while watch.recv().await.is_some() {} }).await.is_ok());
    api.server.shutdown().await;
}

#[tokio::test]
async fn deleting_a_namespace_deletes_its_contents() {
    let api = start().await;
    api.server.create_service_account("shop", "web").expect("sa");
    assert_eq!(api.post(SECRETS, secret("s", json!({}))).await.0, 201);
    let mut watch = api.watch("/api/v1/secrets?watch=true&resourceVersion=0").await;
    assert_eq!(next_change(&mut watch).await["type"], "ADDED");
    let (code, ns) = api.call("DELETE", "/api/v1/namespaces/shop", JSON, Value::Null).await;
    assert_eq!((code, &ns["kind"]), (200, &json!("Namespace")));
    let deleted = next_change(&mut watch).await;
    assert_eq!((&deleted["type"], &deleted["object"]["metadata"]["name"]), (&json!("DELETED"), &json!("s")));
    assert_status(&api.get(&format!("{SECRETS}/s")).await, 404, "NotFound");
    assert_status(&api.get("/api/v1/namespaces/shop/serviceaccounts/web").await, 404, "NotFound");
    let (_, namespaces) = api.get("/api/v1/namespaces").await;
    let ns = namespaces["items"].as_array().expect("items");
    assert!(ns.iter().all(|n| n["metadata"]["name"] != "shop"));
    assert!(ns.iter().any(|n| n["metadata"]["labels"]["kubernetes.io/metadata.name"] == "default"));
    api.server.shutdown().await;
}

#[tokio::test]
async fn faults_delay_hang_and_count() {
    let api = start().await;
    let before = api.server.request_count("get", "secrets");
    api.server.faults().set_delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_status(&api.get(&format!("{SECRETS}/x")).await, 404, "NotFound");
    assert!(started.elapsed() >= Duration::from_millis(300), "delayed");
    api.server.faults().set_delay(Duration::ZERO);

    api.server.faults().hang();
    let path = format!("{SECRETS}/x");
    {
        let pending = api.get(&path);
        tokio::pin!(pending);
        assert!(timeout(Duration::from_millis(300), &mut pending).await.is_err(), "a hung server does not answer");
        api.server.faults().release();
        assert_eq!(timeout(WAIT, pending).await.expect("answered once released").0, 404);
    }
    assert_eq!(api.server.request_count("get", "secrets"), before + 2);

    // The same switches over HTTP, for the binary.
    let (code, _) = api.post("/_test/faults/delay?ms=0", Value::Null).await;
    assert_eq!(code, 200);
    let (code, counts) = api.get("/_test/requests").await;
    assert_eq!(code, 200);
    assert!(counts.as_array().expect("rows").iter().any(|r| r["verb"] == "get" && r["resource"] == "secrets"));

    // Discovery and version, as kubectl reads them.
    let (_, version) = api.get("/version").await;
    assert_eq!((&version["major"], &version["minor"]), (&json!("1"), &json!("33")));
    let (_, core) = api.get("/api/v1").await;
    let resources: Vec<&str> =
        core["resources"].as_array().expect("resources").iter().filter_map(|r| r["name"].as_str()).collect();
    for r in ["namespaces", "pods", "secrets", "serviceaccounts", "serviceaccounts/token"] {
        assert!(resources.contains(&r), "{r} in {resources:?}");
    }
    let (_, groups) = api.get("/apis").await;
    assert_eq!(groups["groups"][0]["name"], "authentication.k8s.io");
    assert_eq!(api.get("/apis/authentication.k8s.io/v1").await.1["resources"][0]["name"], "tokenreviews");
    assert_eq!(api.get("/openapi/v2").await.0, 404);
    api.server.shutdown().await;
}
