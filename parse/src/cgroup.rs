//! The pod a process belongs to, read from `/proc/<pid>/cgroup` as kubelet
//! lays it out: cgroup v1 and v2, the cgroupfs driver (`.../pod<uid>/<id>`)
//! and the systemd driver (`kubepods-<qos>-pod<uid_with_underscores>.slice`),
//! whatever runtime named the container scope (containerd, CRI-O, Docker), and
//! paths seen through a cgroup namespace (`/../..`).

use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CgroupError {
    #[error("the process's cgroups name two pods ({0} and {1})")]
    Conflicting(String, String),
}

/// The pod UID in a `/proc/<pid>/cgroup` file, or `None` for a process outside
/// any pod.
pub fn pod_uid(cgroup_file: &str) -> Result<Option<String>, CgroupError> {
    let found: BTreeSet<String> = cgroup_file
        .lines()
        .filter_map(|line| line.splitn(3, ':').nth(2))
        .flat_map(|path| path.split('/'))
        .filter_map(uid_in_component)
        .collect();
    let mut uids = found.into_iter();
    match (uids.next(), uids.next()) {
        (None, _) => Ok(None),
        (Some(uid), None) => Ok(Some(uid)),
        (Some(a), Some(b)) => Err(CgroupError::Conflicting(a, b)),
    }
}

/// `pod<uid>` (cgroupfs) or `...-pod<uid_with_underscores>.slice` (systemd).
fn uid_in_component(component: &str) -> Option<String> {
    if let Some(uid) = component.strip_prefix("pod") {
        return is_pod_uid(uid).then(|| uid.to_owned());
    }
    let slice = component.strip_suffix(".slice")?;
    let (_, uid) = slice.rsplit_once("-pod")?;
    let uid = uid.replace('_', "-");
    is_pod_uid(&uid).then_some(uid)
}

/// A UUID (API pods) or 32 hex digits (static pods: a hash of the manifest).
fn is_pod_uid(s: &str) -> bool {
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    match s.len() {
        36 => s.bytes().enumerate().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == b'-' } else { hex(c) }),
        32 => s.bytes().all(hex),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../tests/fixtures/cgroup/", $name, ".txt"))
        };
    }

    const BESTEFFORT: &str = "8dbc5577-d0e2-4706-8787-57d52c03ddf2";
    const GUARANTEED: &str = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
    const BURSTABLE: &str = "3a4b5c6d-7e8f-4a1b-9c2d-3e4f5a6b7c8d";

    #[test]
    fn every_kubelet_layout() {
        let cases = [
            (fixture!("v1-cgroupfs-containerd-besteffort"), BESTEFFORT),
            (fixture!("v1-cgroupfs-docker-guaranteed"), GUARANTEED),
            (fixture!("v1-systemd-crio-burstable"), BURSTABLE),
            (fixture!("v2-systemd-containerd-besteffort"), BESTEFFORT),
            (fixture!("v2-systemd-containerd-guaranteed"), GUARANTEED),
            (fixture!("v2-systemd-docker-burstable"), BURSTABLE),
            (fixture!("v2-cgroupfs-containerd-burstable"), BURSTABLE),
            (fixture!("v2-systemd-crio-namespaced"), BESTEFFORT),
            (fixture!("v2-kind-nested-systemd"), BESTEFFORT),
            (fixture!("v1-static-pod-cgroupfs"), "5d7a9c8b6a0e4f1c2b3d4e5f6a7b8c9d"),
        ];
        for (file, want) in cases {
            assert_eq!(pod_uid(file), Ok(Some(want.to_owned())), "{file}");
        }
    }

    #[test]
    fn processes_outside_pods() {
        assert_eq!(pod_uid(fixture!("host-process-v1")), Ok(None));
        assert_eq!(pod_uid(fixture!("host-process-v2")), Ok(None));
        assert_eq!(pod_uid(""), Ok(None));
        assert_eq!(pod_uid("garbage without colons\n::\n"), Ok(None));
        // Look-alikes that are not pod UIDs.
        assert_eq!(pod_uid("0::/kubepods/podcast/x\n0::/x-podNOT_A_UID.slice\n"), Ok(None));
    }

    #[test]
    fn two_pods_are_refused() {
        assert!(matches!(pod_uid(fixture!("conflicting")), Err(CgroupError::Conflicting(..))));
    }
}
