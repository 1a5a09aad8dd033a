//! The webhook's heart: what a pod that asks for vaultlet gets. Pure: a pod in,
//! the pod it should become (or a refusal that names the annotation to fix) out.
//!
//! A pod annotated `vaultlet.io/inject: "true"` gets the CSI volume of the
//! agent's socket directory (read-only), a projected ServiceAccount token for
//! the agent's audience, their mounts in each container (or in those the
//! annotation `vaultlet.io/inject-containers` names), the socket's group among
//! its supplemental groups, and the clients' environment variables where the
//! paths differ from their defaults. What the pod already has is reused, so a
//! second pass changes nothing.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{
    CSIVolumeSource, Container, EnvVar, PodSpec, ProjectedVolumeSource, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};

pub use k8s_openapi::api::core::v1::Pod;

/// `"true"` asks for injection; `"false"` (or no annotation) leaves the pod alone.
pub const INJECT: &str = "vaultlet.io/inject";
/// Comma-separated container names (init containers included) that get the
/// mounts; without it, every container does.
pub const INJECT_CONTAINERS: &str = "vaultlet.io/inject-containers";

/// The names the webhook gives the volumes it adds.
pub const SOCKET_VOLUME: &str = "vaultlet-socket";
pub const TOKEN_VOLUME: &str = "vaultlet-token";

/// What every injected pod gets; the command line fills it from the CSI driver's
/// name and the clients' defaults.
#[derive(Clone, Debug)]
pub struct Injection {
    /// The CSI driver that hands out the socket directory.
    pub csi_driver: String,
    /// Where containers see the socket directory.
    pub socket_dir: String,
    /// Where containers see the token's directory, and the token's file name in it.
    pub token_dir: String,
    pub token_file: String,
    /// The audience the agent accepts, and the token's lifetime (kubelet renews
    /// it at 80 %).
    pub audience: String,
    pub token_seconds: i64,
    /// The socket's group: a pod must be in it to connect.
    pub socket_group: Option<i64>,
    /// Set in each injected container that does not set it itself: where the
    /// paths above differ from the clients' defaults.
    pub env: Vec<(String, String)>,
}

/// A pod refused, with the annotation or field to change.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("annotation {INJECT}: {0:?} is neither \"true\" nor \"false\"")]
    BadInject(String),
    #[error("annotation {INJECT_CONTAINERS} is set but {INJECT} is not \"true\": set {INJECT}: \"true\" or remove it")]
    ContainersWithoutInject,
    #[error(
        "annotation {INJECT_CONTAINERS} names no container: list container names separated by commas, or \
         remove it to inject into every container"
    )]
    NoContainers,
    #[error("annotation {INJECT_CONTAINERS}: the pod has no container named {name:?} (it has: {have})")]
    UnknownContainer { name: String, have: String },
    #[error(
        "annotation {INJECT}: the pod already has a volume named {0:?} that is not vaultlet's; rename that \
         volume, or write vaultlet's volumes by hand and remove the annotation"
    )]
    VolumeTaken(String),
    #[error(
        "annotation {INJECT}: container {container:?} already mounts volume {volume:?} at {path}, where \
         vaultlet's volume goes; move that mount, or name the other containers in {INJECT_CONTAINERS}"
    )]
    MountPathTaken { container: String, volume: String, path: String },
}

/// The pod `pod` should become, `None` when it is to be left as it is.
pub fn mutate(pod: &Pod, injection: &Injection) -> Result<Option<Pod>, Refusal> {
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let asked = match annotation(INJECT).map(str::trim) {
        Some("true") => true,
        None | Some("false") => false,
        Some(other) => return Err(Refusal::BadInject(other.to_owned())),
    };
    let named = annotation(INJECT_CONTAINERS);
    if !asked {
        return match named {
            Some(_) => Err(Refusal::ContainersWithoutInject),
            None => Ok(None),
        };
    }
    let Some(spec) = &pod.spec else { return Ok(None) };
    let targets = targets(spec, named)?;

    let mut new = pod.clone();
    let spec = new.spec.get_or_insert_with(Default::default);
    let socket = volume(spec, SOCKET_VOLUME, |v| is_socket(v, injection), || socket_volume(injection))?;
    let token = volume(spec, TOKEN_VOLUME, |v| is_token(v, injection), || token_volume(injection))?;
    let containers = spec.containers.iter_mut().chain(spec.init_containers.iter_mut().flatten());
    for container in containers.filter(|c| targets.contains(c.name.as_str())) {
        let socket_added = mount(container, &socket, &injection.socket_dir)?;
        let token_added = mount(container, &token, &injection.token_dir)?;
        if socket_added || token_added {
            set_env(container, &injection.env);
        }
    }
    if let Some(group) = injection.socket_group {
        let groups =
            spec.security_context.get_or_insert_with(Default::default).supplemental_groups.get_or_insert_default();
        if !groups.contains(&group) {
            groups.push(group);
        }
    }
    Ok((new != *pod).then_some(new))
}

/// The names of the containers to inject into.
fn targets<'a>(spec: &'a PodSpec, named: Option<&'a str>) -> Result<BTreeSet<&'a str>, Refusal> {
    let all: Vec<&str> =
        spec.containers.iter().chain(spec.init_containers.iter().flatten()).map(|c| c.name.as_str()).collect();
    let Some(named) = named else { return Ok(all.into_iter().collect()) };
    let wanted: BTreeSet<&str> = named.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if wanted.is_empty() {
        return Err(Refusal::NoContainers);
    }
    if let Some(unknown) = wanted.iter().find(|n| !all.contains(n)) {
        return Err(Refusal::UnknownContainer { name: (*unknown).to_owned(), have: all.join(", ") });
    }
    Ok(wanted)
}

/// The name of the pod's volume that `is_ours`, adding `make()` under `name`
/// when there is none.
fn volume(
    spec: &mut PodSpec,
    name: &str,
    is_ours: impl Fn(&Volume) -> bool,
    make: impl FnOnce() -> Volume,
) -> Result<String, Refusal> {
    let volumes = spec.volumes.get_or_insert_default();
    if let Some(ours) = volumes.iter().find(|v| is_ours(v)) {
        return Ok(ours.name.clone());
    }
    if volumes.iter().any(|v| v.name == name) {
        return Err(Refusal::VolumeTaken(name.to_owned()));
    }
    volumes.push(make());
    Ok(name.to_owned())
}

fn is_socket(volume: &Volume, injection: &Injection) -> bool {
    volume.csi.as_ref().is_some_and(|csi| csi.driver == injection.csi_driver && csi.read_only == Some(true))
}

fn is_token(volume: &Volume, injection: &Injection) -> bool {
    let sources = volume.projected.as_ref().and_then(|p| p.sources.as_ref());
    sources.into_iter().flatten().any(|s| {
        s.service_account_token.as_ref().is_some_and(|t| {
            t.audience.as_deref() == Some(injection.audience.as_str()) && t.path == injection.token_file
        })
    })
}

fn socket_volume(injection: &Injection) -> Volume {
    Volume {
        name: SOCKET_VOLUME.into(),
        // Read-only: the pod reaches the socket but cannot remove or replace it
        // (the driver refuses anything else).
        csi: Some(CSIVolumeSource {
            driver: injection.csi_driver.clone(),
            read_only: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn token_volume(injection: &Injection) -> Volume {
    let token = ServiceAccountTokenProjection {
        audience: Some(injection.audience.clone()),
        expiration_seconds: Some(injection.token_seconds),
        path: injection.token_file.clone(),
    };
    Volume {
        name: TOKEN_VOLUME.into(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(vec![VolumeProjection { service_account_token: Some(token), ..Default::default() }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Mounts `volume` read-only at `path` in `container` unless it is mounted
/// already; whether it added the mount.
fn mount(container: &mut Container, volume: &str, path: &str) -> Result<bool, Refusal> {
    let mounts = container.volume_mounts.get_or_insert_default();
    if mounts.iter().any(|m| m.name == volume) {
        return Ok(false);
    }
    if let Some(taken) = mounts.iter().find(|m| m.mount_path.trim_end_matches('/') == path) {
        return Err(Refusal::MountPathTaken {
            container: container.name.clone(),
            volume: taken.name.clone(),
            path: path.to_owned(),
        });
    }
    mounts.push(VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..Default::default()
    });
    Ok(true)
}

/// Adds the variables the container does not set itself.
fn set_env(container: &mut Container, vars: &[(String, String)]) {
    if vars.is_empty() {
        return;
    }
    let env = container.env.get_or_insert_default();
    for (name, value) in vars {
        if !env.iter().any(|e| &e.name == name) {
            env.push(EnvVar { name: name.clone(), value: Some(value.clone()), ..Default::default() });
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// What `vaultlet inject` builds from its defaults.
    pub(crate) fn injection() -> Injection {
        Injection {
            csi_driver: "csi.vaultlet.io".into(),
            socket_dir: "/run/vaultlet".into(),
            token_dir: "/var/run/secrets/vaultlet".into(),
            token_file: "token".into(),
            audience: "vaultlet".into(),
            token_seconds: 600,
            socket_group: Some(10750),
            env: vec![],
        }
    }

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "annotations": annotations},
            "spec": {
                "initContainers": [{"name": "fetch", "image": "vaultlet"}],
                "containers": [{"name": "app", "image": "app"}, {"name": "proxy", "image": "proxy"}]
            }
        }))
        .unwrap()
    }

    fn mounts(pod: &Pod, container: &str) -> Vec<(String, String)> {
        let spec = pod.spec.as_ref().unwrap();
        let all = spec.containers.iter().chain(spec.init_containers.iter().flatten());
        let c = all.into_iter().find(|c| c.name == container).unwrap();
        c.volume_mounts.iter().flatten().map(|m| (m.name.clone(), m.mount_path.clone())).collect()
    }

    #[test]
    fn an_annotated_pod_gets_volumes_mounts_and_the_socket_group() {
        let new = mutate(&pod(serde_json::json!({INJECT: "true"})), &injection()).unwrap().unwrap();
        let spec = new.spec.as_ref().unwrap();
        let volumes = spec.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 2);
        assert!(is_socket(&volumes[0], &injection()) && is_token(&volumes[1], &injection()));
        let projected = volumes[1].projected.as_ref().unwrap().sources.as_ref().unwrap();
        assert_eq!(projected[0].service_account_token.as_ref().unwrap().expiration_seconds, Some(600));
        let expected = vec![
            (SOCKET_VOLUME.to_owned(), "/run/vaultlet".to_owned()),
            (TOKEN_VOLUME.to_owned(), "/var/run/secrets/vaultlet".to_owned()),
        ];
        for c in ["app", "proxy", "fetch"] {
            assert_eq!(mounts(&new, c), expected, "{c}");
        }
        assert_eq!(spec.security_context.as_ref().unwrap().supplemental_groups, Some(vec![10750]));
        // No variable where the paths are the clients' defaults.
        assert!(spec.containers[0].env.is_none());
    }

    #[test]
    fn a_second_pass_changes_nothing() {
        let once = mutate(&pod(serde_json::json!({INJECT: "true"})), &injection()).unwrap().unwrap();
        assert_eq!(mutate(&once, &injection()).unwrap(), None);
    }

    #[test]
    fn pods_without_the_annotation_or_with_false_are_left_alone() {
        assert_eq!(mutate(&pod(serde_json::json!({})), &injection()).unwrap(), None);
        assert_eq!(mutate(&pod(serde_json::json!({INJECT: "false"})), &injection()).unwrap(), None);
    }

    #[test]
    fn a_pod_that_has_what_it_needs_is_left_alone() {
        let mut by_hand = pod(serde_json::json!({INJECT: "true", INJECT_CONTAINERS: "app"}));
        let spec = by_hand.spec.as_mut().unwrap();
        let mut socket = socket_volume(&injection());
        socket.name = "sock".into();
        let mut token = token_volume(&injection());
        token.name = "tok".into();
        spec.volumes = Some(vec![socket, token]);
        spec.containers[0].volume_mounts = Some(vec![
            VolumeMount { name: "sock".into(), mount_path: "/sock".into(), ..Default::default() },
            VolumeMount { name: "tok".into(), mount_path: "/tok".into(), ..Default::default() },
        ]);
        spec.security_context = Some(k8s_openapi::api::core::v1::PodSecurityContext {
            supplemental_groups: Some(vec![10750]),
            ..Default::default()
        });
        assert_eq!(mutate(&by_hand, &injection()).unwrap(), None);
    }

    #[test]
    fn only_the_named_containers_get_mounts_and_variables_where_paths_differ() {
        let mut moved = injection();
        moved.socket_dir = "/vaultlet".into();
        moved.env = vec![("VAULTLET_SOCKET".into(), "/vaultlet/vaultlet.sock".into())];
        let new = mutate(&pod(serde_json::json!({INJECT: "true", INJECT_CONTAINERS: " app,fetch "})), &moved)
            .unwrap()
            .unwrap();
        assert!(mounts(&new, "proxy").is_empty());
        assert_eq!(mounts(&new, "fetch")[0].1, "/vaultlet");
        let env = new.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        assert_eq!(
            (env[0].name.as_str(), env[0].value.as_deref()),
            ("VAULTLET_SOCKET", Some("/vaultlet/vaultlet.sock"))
        );
    }

    #[test]
    fn a_variable_the_container_sets_itself_is_kept() {
        let mut moved = injection();
        moved.env = vec![("VAULTLET_SOCKET".into(), "/x".into())];
        let mut p = pod(serde_json::json!({INJECT: "true"}));
        p.spec.as_mut().unwrap().containers[0].env =
            Some(vec![EnvVar { name: "VAULTLET_SOCKET".into(), value: Some("/mine".into()), ..Default::default() }]);
        let new = mutate(&p, &moved).unwrap().unwrap();
        let env = new.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].value.as_deref(), Some("/mine"));
    }

    #[test]
    fn bad_annotations_are_refused_naming_the_annotation() {
        let refusals = [
            (serde_json::json!({INJECT: "yes"}), Refusal::BadInject("yes".into())),
            (serde_json::json!({INJECT_CONTAINERS: "app"}), Refusal::ContainersWithoutInject),
            (serde_json::json!({INJECT: "true", INJECT_CONTAINERS: " , "}), Refusal::NoContainers),
            (
                serde_json::json!({INJECT: "true", INJECT_CONTAINERS: "app,db"}),
                Refusal::UnknownContainer { name: "db".into(), have: "app, proxy, fetch".into() },
            ),
        ];
        for (annotations, expected) in refusals {
            let refusal = mutate(&pod(annotations.clone()), &injection()).unwrap_err();
            assert_eq!(refusal, expected, "{annotations}");
            assert!(refusal.to_string().contains("vaultlet.io/inject"), "{refusal}");
        }
    }

    #[test]
    fn a_clash_with_the_pods_own_volumes_is_refused() {
        let mut p = pod(serde_json::json!({INJECT: "true"}));
        let spec = p.spec.as_mut().unwrap();
        spec.volumes = Some(vec![Volume { name: SOCKET_VOLUME.into(), ..Default::default() }]);
        assert_eq!(mutate(&p, &injection()).unwrap_err(), Refusal::VolumeTaken(SOCKET_VOLUME.into()));

        let mut p = pod(serde_json::json!({INJECT: "true"}));
        p.spec.as_mut().unwrap().containers[1].volume_mounts =
            Some(vec![VolumeMount { name: "cache".into(), mount_path: "/run/vaultlet/".into(), ..Default::default() }]);
        let refusal = mutate(&p, &injection()).unwrap_err();
        assert!(matches!(&refusal, Refusal::MountPathTaken { container, .. } if container == "proxy"), "{refusal}");
    }
}
