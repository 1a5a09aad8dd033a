//! The test API server driven by kube-rs, the client vaultlet uses: CRUD with labels,
//! optimistic concurrency, and the runtime watcher and reflector through dropped
//! connections and expired history.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, reflector as reflect};
use tokio::sync::mpsc;
use tokio::time::timeout;
use vaultlet_tests::kube_api::{KubeApiServer, Options, string_map};

const WAIT: Duration = Duration::from_secs(10);

fn client(server: &KubeApiServer) -> kube::Client {
    let mut config = kube::Config::new(server.url().parse().expect("the server URL parses"));
    config.default_namespace = "default".to_owned();
    config.auth_info.token = Some(server.admin_token().to_owned().into());
    kube::Client::try_from(config).expect("a kube client for the test server")
}

fn secret(name: &str, labels: &[(&str, &str)], value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta { name: Some(name.to_owned()), labels: Some(string_map(labels)), ..Default::default() },
        data: Some(BTreeMap::from([("v".to_owned(), ByteString(value.as_bytes().to_vec()))])),
        ..Default::default()
    }
}

fn value_of(secret: &Secret) -> String {
    let data = secret.data.as_ref().and_then(|d| d.get("v")).map(|b| b.0.clone()).unwrap_or_default();
    String::from_utf8(data).expect("test values are UTF-8")
}

async fn start() -> (KubeApiServer, Api<Secret>) {
    let server = KubeApiServer::start(Options::default()).await.expect("server starts");
    server.create_namespace("shop").expect("namespace");
    let api = Api::namespaced(client(&server), "shop");
    (server, api)
}

#[tokio::test]
async fn crud_with_labels_and_optimistic_concurrency() {
    let (server, api) = start().await;
    let pp = PostParams::default();

    let created = api.create(&pp, &secret("db", &[("app", "web")], "one")).await.expect("create");
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36), "uid set: {meta:?}");
    assert!(meta.creation_timestamp.is_some());
    let first_version: u64 = meta.resource_version.as_deref().expect("rv").parse().expect("rv is an integer");
    assert_eq!(created.type_.as_deref(), Some("Opaque"), "type defaults to Opaque");

    let again = api.create(&pp, &secret("db", &[], "x")).await.expect_err("create of an existing name");
    assert!(matches!(&again, kube::Error::Api(s) if s.code == 409 && s.reason == "AlreadyExists"), "{again:?}");

    api.create(&pp, &secret("cache", &[("app", "cache")], "two")).await.expect("create");
    let got = api.get("db").await.expect("get");
    assert_eq!(value_of(&got), "one");

    let web = api.list(&ListParams::default().labels("app=web")).await.expect("list");
    assert_eq!(web.items.iter().map(|s| s.metadata.name.clone().unwrap_or_default()).collect::<Vec<_>>(), ["db"]);
    let list_version: u64 = web.metadata.resource_version.expect("list rv").parse().expect("integer");
    assert!(list_version > first_version);
    let not_web = api.list(&ListParams::default().labels("app!=web")).await.expect("list");
    assert_eq!(not_web.items.len(), 1);
    let by_name = api.list(&ListParams::default().fields("metadata.name=cache")).await.expect("list");
    assert_eq!(by_name.items.len(), 1);
    let everywhere: Api<Secret> = Api::all(client(&server));
    assert_eq!(everywhere.list(&ListParams::default()).await.expect("list all").items.len(), 2);

    let mut update = got.clone();
    update.data = secret("db", &[], "two").data;
    let replaced = api.replace("db", &pp, &update).await.expect("replace");
    assert_eq!(value_of(&replaced), "two");
    assert_ne!(replaced.metadata.resource_version, got.metadata.resource_version);
    assert_eq!(replaced.metadata.uid, got.metadata.uid, "uid survives updates");

    // `got` still carries the version before the replace: a real apiserver refuses it.
    let stale = api.replace("db", &pp, &got).await.expect_err("stale update");
    assert!(matches!(&stale, kube::Error::Api(s) if s.code == 409 && s.reason == "Conflict"), "{stale:?}");
    assert_eq!(value_of(&api.get("db").await.expect("get")), "two", "the stale write changed nothing");

    let patch = serde_json::json!({"metadata": {"labels": {"tier": "gold"}}, "stringData": {"v": "three"}});
    let patched = api.patch("db", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("merge patch");
    assert_eq!(value_of(&patched), "three", "stringData is merged into data");
    assert!(patched.string_data.is_none(), "stringData is never stored");
    assert_eq!(patched.metadata.labels.as_ref().and_then(|l| l.get("tier")).map(String::as_str), Some("gold"));

    let deleted = api.delete("db", &DeleteParams::default()).await.expect("delete");
    assert!(deleted.is_right(), "a Secret delete answers with a success Status");
    let missing = api.get("db").await.expect_err("get after delete");
    assert!(matches!(&missing, kube::Error::Api(s) if s.code == 404 && s.reason == "NotFound"), "{missing:?}");

    let nowhere: Api<Secret> = Api::namespaced(client(&server), "absent");
    let no_ns = nowhere.create(&pp, &secret("x", &[], "x")).await.expect_err("create in a missing namespace");
    assert!(matches!(&no_ns, kube::Error::Api(s) if s.code == 404 && s.message.contains("namespaces \"absent\"")));
    server.shutdown().await;
}

/// Receives watcher events until `done` says the collected state is what the test
/// expects, or fails after `WAIT`.
async fn until<T>(what: &str, rx: &mut mpsc::UnboundedReceiver<T>, mut done: impl FnMut(&T) -> bool) {
    timeout(WAIT, async {
        while let Some(item) = rx.recv().await {
            if done(&item) {
                return;
            }
        }
        panic!("the watcher stream ended");
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} from the watcher in time"));
}

fn name(secret: &Secret) -> String {
    secret.metadata.name.clone().unwrap_or_default()
}

#[tokio::test]
async fn watcher_sees_changes_and_relists_after_expired_history() {
    let (server, api) = start().await;
    let pp = PostParams::default();
    api.create(&pp, &secret("before", &[("app", "web")], "0")).await.expect("create");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let stream = watcher::watcher(api.clone(), watcher::Config::default().labels("app=web")).default_backoff();
    let watching = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            // Errors (the 410 among them) are the watcher's to recover from; keep going.
            if let Ok(event) = item
                && tx.send(event).is_err()
            {
                return;
            }
        }
    });

    let mut initial = BTreeSet::new();
    until("the initial list", &mut rx, |e| match e {
        Event::InitApply(s) => {
            initial.insert(name(s));
            false
        }
        Event::InitDone => true,
        _ => false,
    })
    .await;
    assert_eq!(initial, BTreeSet::from(["before".to_owned()]));

    api.create(&pp, &secret("other", &[("app", "db")], "0")).await.expect("create non-matching");
    api.create(&pp, &secret("s1", &[("app", "web")], "1")).await.expect("create");
    until("s1 added", &mut rx, |e| matches!(e, Event::Apply(s) if name(s) == "s1")).await;

    let mut s1 = api.get("s1").await.expect("get");
    s1.data = secret("s1", &[], "2").data;
    api.replace("s1", &pp, &s1).await.expect("replace");
    until("s1 modified", &mut rx, |e| matches!(e, Event::Apply(s) if name(s) == "s1" && value_of(s) == "2")).await;

    // Relabelled into the selector: the watch sees it appear.
    let relabel = serde_json::json!({"metadata": {"labels": {"app": "web"}}});
    api.patch("other", &PatchParams::default(), &Patch::Merge(&relabel)).await.expect("patch");
    until("other relabelled in", &mut rx, |e| matches!(e, Event::Apply(s) if name(s) == "other")).await;

    api.delete("s1", &DeleteParams::default()).await.expect("delete");
    until("s1 deleted", &mut rx, |e| matches!(e, Event::Delete(s) if name(s) == "s1")).await;

    // Now the watch goes down while the server is unresponsive, changes happen that no
    // open watch sees, and the history is compacted: the watcher must re-list by itself.
    let lists_before = server.request_count("list", "secrets");
    server.faults().hang();
    server.faults().drop_watches();
    server.put_secret(secret_in("shop", "during", &[("app", "web")], "3")).expect("create while down");
    server.delete::<Secret>("shop", "other").expect("delete while down");
    server.faults().expire_history();
    server.faults().release();

    let mut relisted = BTreeSet::new();
    until("the re-list", &mut rx, |e| match e {
        Event::Init => {
            relisted.clear();
            false
        }
        Event::InitApply(s) => {
            relisted.insert(name(s));
            false
        }
        Event::InitDone => true,
        _ => false,
    })
    .await;
    assert_eq!(relisted, BTreeSet::from(["before".to_owned(), "during".to_owned()]), "the re-list has every change");
    assert!(server.request_count("list", "secrets") > lists_before, "the watcher re-listed");

    // And it keeps watching after the re-list.
    api.create(&pp, &secret("after", &[("app", "web")], "4")).await.expect("create");
    until("after added", &mut rx, |e| matches!(e, Event::Apply(s) if name(s) == "after")).await;

    watching.abort();
    server.shutdown().await;
}

fn secret_in(namespace: &str, name: &str, labels: &[(&str, &str)], value: &str) -> Secret {
    let mut s = secret(name, labels, value);
    s.metadata.namespace = Some(namespace.to_owned());
    s
}

fn snapshot(store: &Store<Secret>) -> BTreeMap<String, String> {
    store.state().iter().map(|s| (name(s), value_of(s))).collect()
}

fn server_state(server: &KubeApiServer) -> BTreeMap<String, String> {
    server
        .list::<Secret>(Some("shop"))
        .iter()
        .filter(|s| s.metadata.labels.as_ref().is_some_and(|l| l.get("app").map(String::as_str) == Some("web")))
        .map(|s| (name(s), value_of(s)))
        .collect()
}

async fn converges(store: &Store<Secret>, server: &KubeApiServer) {
    let expected = server_state(server);
    timeout(WAIT, async {
        while snapshot(store) != expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("reflector stuck at {:?}, server has {expected:?}", snapshot(store)));
}

#[tokio::test]
async fn reflector_store_converges_through_faults() {
    let (server, api) = start().await;
    let pp = PostParams::default();
    for i in 0..5 {
        api.create(&pp, &secret(&format!("s{i}"), &[("app", "web")], "0")).await.expect("create");
    }
    let (reader, writer) = reflector::store();
    let stream = reflect(writer, watcher::watcher(api.clone(), watcher::Config::default().labels("app=web")))
        .default_backoff()
        .touched_objects();
    let running = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Errors are items the backoff retries after; the stream only needs polling.
        while stream.next().await.is_some() {}
    });
    timeout(WAIT, reader.wait_until_ready()).await.expect("ready in time").expect("store ready");
    converges(&reader, &server).await;

    for round in 1..=3 {
        for mut s in api.list(&ListParams::default()).await.expect("list").items {
            s.data = secret("", &[], &format!("{round}")).data;
            api.replace(&name(&s), &pp, &s).await.expect("replace");
        }
        api.delete(&format!("s{}", round), &DeleteParams::default()).await.expect("delete");
        converges(&reader, &server).await;

        server.faults().drop_watches();
        server.put_secret(secret_in("shop", &format!("new{round}"), &[("app", "web")], "n")).expect("put");
        if round == 2 {
            server.faults().expire_history();
        }
        converges(&reader, &server).await;
    }
    running.abort();
    server.shutdown().await;
}
