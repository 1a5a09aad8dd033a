"""Consistency checks of the rendered manifests against the code (run by deploy/check).

  check_manifests.py agree DEPLOY.yaml EXAMPLE.yaml...
      The agent's socket and the clients' defaults, the CSI driver that hands
      the socket's directory to pods (its name, the directory it publishes, its
      registration, the one privileged container), the callers' token audience,
      the socket's owner and the callers' groups, the image's USER, the config
      file's keys and the command-line flags all agree with the sources:
      client-rust, client-python, agent/src, csi/src and the image's script
      (scripts/oci_image.py). Nothing
      here is written twice: each expected value is read from where the code
      defines it.
      An example workload annotated vaultlet.io/inject: "true" is instead
      checked against the webhook's configuration (DEPLOY.yaml must then be
      rendered with the `inject` component): its namespace is one the webhook
      selects, and it does not opt out by label.
  check_manifests.py split-operator-kinds RENDERED.yaml OUT.yaml
      Moves the objects of CRDs kubernetes-validate has no schema for (the
      Prometheus Operator's PodMonitor and PrometheusRule, cert-manager's Issuer
      and Certificate) out of a rendering into OUT.yaml.
  check_manifests.py monitoring DEPLOY.yaml OPERATOR_KINDS.yaml
      The PodMonitor scrapes the agent's pods where the agent serves its
      metrics, and the job it names its series is the one the alerts select;
      every alert has a severity, a summary and a description (promtool checks
      the rest: scripts/alerts).
  check_manifests.py without-csi WITHOUT.yaml DEFAULT.yaml
      The Helm chart rendered with csi.enabled=false (WITHOUT) against its
      default render: no CSIDriver and no privileged container; the same
      objects but the CSIDriver; the DaemonSet without the CSI plugin and the
      registrar and the volumes only they mount, the rest of it unchanged, and
      no checkov skip of it naming a container it no longer has.
  check_manifests.py strip-skips SRC_DIR DST_DIR
      Copies the rendered YAML files without their checkov.io/skip annotations,
      and other files (Dockerfiles) without their `# checkov:skip=` comments.
  check_manifests.py skips WITH.json WITHOUT.json
      checkov's JSON reports (kubernetes, dockerfile) with and without the
      skips: no check fails, every skip has a reason, and every skip is needed
      (its check fails without it, on the same object of the same file: the
      renderings share objects that differ, e.g. the DaemonSet with and without
      the CSI driver).

Needs PyYAML (which kubernetes-validate brings) and nothing else.
"""

from __future__ import annotations

import ast
import json
import posixpath
import re
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, NoReturn, Optional, Set, Tuple

import yaml  # type: ignore[import-untyped]  # PyYAML, from kubernetes-validate; no stubs installed

ROOT = Path(__file__).resolve().parent.parent
SKIP_PREFIX = "checkov.io/skip"
WORKLOADS = {"Pod", "Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob"}

Obj = Dict[str, Any]


class Failure(Exception):
    pass


def fail(message: str) -> NoReturn:
    raise Failure(message)


# ---------------------------------------------------------------- the sources


def rust_const(path: str, name: str) -> str:
    text = (ROOT / path).read_text()
    found = re.findall(rf'\bconst {name}: &str = "([^"]*)";', text)
    if len(found) != 1:
        fail(f"{path}: expected one `const {name}: &str = \"...\";`, found {len(found)}")
    return str(found[0])


def python_const(package: str, name: str) -> str:
    """The one module-level string assignment of `name` in the package's sources."""
    found: List[Tuple[Path, str]] = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.parse(path.read_text(), str(path)).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                value = node.value.value
                if isinstance(value, str) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
                    found.append((path, value))
    if len(found) != 1:
        fail(f"{package}: expected one module-level `{name} = \"...\"`, found {len(found)}")
    return found[0][1]


def client_default(rust_file: str, name: str) -> str:
    """A client default, the same in the Rust and the Python client."""
    rust = rust_const(rust_file, name)
    python = python_const("client-python/src/vaultlet", name)
    if rust != python:
        fail(f"the clients disagree on {name}: {rust!r} ({rust_file}) and {python!r} (client-python)")
    return rust


def rust_struct(name: str) -> str:
    """The body of `struct NAME { ... }` somewhere under agent/src or parse/src."""
    bodies = []
    for crate in ("agent/src", "parse/src"):
        for path in sorted((ROOT / crate).rglob("*.rs")):
            m = re.search(rf"\bstruct {name} \{{\n(.*?)\n\}}", path.read_text(), re.S)
            if m:
                bodies.append(m.group(1))
    if len(bodies) != 1:
        fail(f"agent/src, parse/src: expected one `struct {name}`, found {len(bodies)}")
    return bodies[0]


def struct_fields(body: str) -> Iterator[Tuple[str, str, List[str]]]:
    """(field, type, attributes) of each field of a struct body."""
    attrs: List[str] = []
    for line in body.splitlines():
        line = line.strip()
        if line.startswith("#["):
            attrs.append(line)
        elif re.match(r"(pub\s+)?\w+:", line):
            m = re.match(r"(?:pub\s+)?(\w+):\s*(.+?),?$", line)
            assert m is not None
            yield m.group(1), m.group(2), attrs
            attrs = []
        elif line and not line.startswith("//"):
            attrs = []


def flags_of(body: str) -> Set[str]:
    """The long flags clap derives for a struct body, following `#[command(flatten)]`."""
    flags: Set[str] = set()
    for field, typ, attrs in struct_fields(body):
        if any("flatten" in a for a in attrs):
            flags |= flags_of(rust_struct(typ))
            continue
        # `#[arg(long ...)]`, or `#[cfg_attr(feature = "cli", arg(long ...))]` (parse/src).
        longs = [a for a in attrs if re.match(r'#\[(cfg_attr\(feature = "cli", )?arg\(.*\blong\b', a)]
        if not longs:
            continue  # a positional argument or the subcommand
        explicit = re.search(r'\blong\s*=\s*"([^"]+)"', longs[0])
        flags.add(explicit.group(1) if explicit else field.replace("_", "-"))
    return flags


def subcommand_flags(command: str) -> Set[str]:
    """Flags of `vaultlet COMMAND`: its `Args` (agent/src/cli/COMMAND.rs, or
    COMMAND/mod.rs for a subcommand of several files; `-` as `_`) and the global ones."""
    cli, module = ROOT / "agent/src/cli", command.replace("-", "_")
    path = next((p for p in (cli / f"{module}.rs", cli / module / "mod.rs") if p.exists()), None)
    if path is None:
        fail(f"vaultlet has no subcommand {command!r} (no agent/src/cli/{command}.rs nor {command}/mod.rs)")
    m = re.search(r"\bstruct Args \{\n(.*?)\n\}", path.read_text(), re.S)
    if not m:
        fail(f"{path.relative_to(ROOT)}: no `struct Args`")
    return flags_of(m.group(1)) | flags_of(rust_struct("Cli")) | {"help"}


def serve_file_keys() -> Set[str]:
    """Keys the `serve` config file accepts: ServeArgs fields not skipped by serde."""
    return {
        field.replace("_", "-")
        for field, _, attrs in struct_fields(rust_struct("ServeArgs"))
        if not any("serde(skip)" in a for a in attrs)
    }


def image_user() -> str:
    """The user the image runs as: USER and GROUP of scripts/oci_image.py."""
    source = (ROOT / "scripts/oci_image.py").read_text()
    ids = [re.search(rf"^{name} = (\d+)$", source, re.M) for name in ("USER", "GROUP")]
    if not all(ids):
        fail("scripts/oci_image.py: no USER or GROUP")
    return ":".join(m.group(1) for m in ids if m)


# ------------------------------------------------------------ the manifests


def load(path: str) -> List[Obj]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name(obj: Obj) -> str:
    return f"{obj['kind']}/{obj['metadata']['name']}"


def pod_spec(obj: Obj) -> Obj:
    spec: Obj = obj["spec"]
    if obj["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec if obj["kind"] == "Pod" else spec["template"]["spec"]


def is_vaultlet_image(image: str) -> bool:
    return re.split(r"[:@]", image.rsplit("/", 1)[-1])[0] == "vaultlet"


def subcommand(container: Obj) -> Optional[str]:
    """The `vaultlet` subcommand a container runs (None: not the vaultlet image)."""
    if not is_vaultlet_image(container["image"]):
        return None
    return str((container.get("args") or [None])[0])


def option(args: List[str], flag: str) -> Optional[str]:
    """The value of `--flag VALUE` or `--flag=VALUE` (the last one wins, as in clap)."""
    value = None
    for i, a in enumerate(args):
        if a == f"--{flag}" and i + 1 < len(args):
            value = args[i + 1]
        elif a.startswith(f"--{flag}="):
            value = a.split("=", 1)[1]
    return value


def env_value(container: Obj, var: str) -> Optional[str]:
    for e in container.get("env") or []:
        if e["name"] == var:
            if "value" not in e:
                fail(f"container {container['name']}: {var} comes from valueFrom, which this check cannot follow")
            return str(e["value"])
    return None


def mount_for(spec: Obj, container: Obj, path: str) -> Tuple[Obj, Obj, str]:
    """The volume mounted over `path` in `container`: (mount, volume, path inside the volume)."""
    best: Optional[Obj] = None
    for m in container.get("volumeMounts") or []:
        mp = m["mountPath"].rstrip("/")
        if path == mp or path.startswith(mp + "/"):
            if best is None or len(mp) > len(best["mountPath"].rstrip("/")):
                best = m
    if best is None:
        fail(f"container {container['name']}: nothing is mounted over {path}")
    assert best is not None
    volume = next((v for v in spec.get("volumes") or [] if v["name"] == best["name"]), None)
    if volume is None:
        fail(f"container {container['name']}: volume {best['name']} is mounted but not declared")
    assert volume is not None
    inside = posixpath.relpath(path, best["mountPath"])
    if best.get("subPath"):
        inside = posixpath.join(best["subPath"], inside)
    return best, volume, posixpath.normpath(inside)


def host_path(spec: Obj, container: Obj, path: str) -> str:
    """Where `path` in `container` is on the node; it must be on a hostPath volume."""
    _, volume, inside = mount_for(spec, container, path)
    if "hostPath" not in volume:
        fail(f"container {container['name']}: {path} is on volume {volume['name']}, not on a hostPath volume")
    return posixpath.normpath(posixpath.join(volume["hostPath"]["path"], inside))


def security(spec: Obj, container: Obj, field: str) -> Any:
    """A securityContext field as the container runs with it (container over pod)."""
    c = (container.get("securityContext") or {}).get(field)
    return c if c is not None else (spec.get("securityContext") or {}).get(field)


def config_file(objs: List[Obj], spec: Obj, container: Obj, path: str) -> Obj:
    """The YAML document at `path` in `container`, from the ConfigMap mounted there."""
    _, volume, inside = mount_for(spec, container, path)
    if "configMap" not in volume:
        fail(f"--config {path} is not on a ConfigMap volume")
    cm_name = volume["configMap"]["name"]
    cm = next((o for o in objs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == cm_name), None)
    if cm is None or inside not in (cm.get("data") or {}):
        fail(f"--config {path}: ConfigMap {cm_name} has no key {inside}")
    assert cm is not None
    return yaml.safe_load(cm["data"][inside]) or {}


class Agent:
    """The agent as the rendered DaemonSet runs it."""

    def __init__(self, objs: List[Obj]) -> None:
        daemonsets = [o for o in objs if o["kind"] == "DaemonSet"]
        if len(daemonsets) != 1:
            fail(f"expected one DaemonSet in the rendered deploy/, found {len(daemonsets)}")
        self.ds = daemonsets[0]
        self.spec = pod_spec(self.ds)
        agents = [c for c in self.spec["containers"] if subcommand(c) == "serve"]
        if len(agents) != 1:
            fail(f"{name(self.ds)}: expected one vaultlet container running `serve`")
        self.container = agents[0]
        self.args: List[str] = self.container["args"]
        config_path = option(self.args, "config") or env_value(self.container, "VAULTLET_CONFIG")
        self.file = config_file(objs, self.spec, self.container, config_path) if config_path else {}
        unknown = set(self.file) - serve_file_keys()
        if unknown:
            fail(f"the agent's config file has keys `vaultlet serve` does not know: {sorted(unknown)}")

    def setting(self, flag: str, env: str, default: str) -> str:
        """Flag, then environment, then config file, then default: the agent's precedence."""
        for value in (option(self.args, flag), env_value(self.container, env), self.file.get(flag)):
            if value is not None:
                return str(value)
        return default


def check_agent(agent: Agent, socket: str) -> str:
    """The agent serves where the clients look; returns the socket's path on the node."""
    served = agent.setting("socket", "VAULTLET_SOCKET", socket)
    if served != socket:
        fail(f"the DaemonSet serves on {served}, the clients look for {socket}")
    mount, volume, _ = mount_for(agent.spec, agent.container, posixpath.dirname(served))
    if volume.get("hostPath", {}).get("type") != "DirectoryOrCreate":
        fail(f"the agent's socket directory must be a hostPath volume of type DirectoryOrCreate ({volume['name']})")
    if mount.get("readOnly"):
        fail("the agent's socket directory is mounted read-only: it cannot create its socket")
    print(f"ok: the DaemonSet serves --socket {served}, the clients' default")
    return host_path(agent.spec, agent.container, served)


def check_ownership(agent: Agent) -> Tuple[int, int]:
    """The init container hands the socket directory to the agent's user and group,
    which are the image's USER (`vaultlet prepare-dirs`, mode 0750 in its code).
    Returns (uid, gid)."""
    uid, gid = security(agent.spec, agent.container, "runAsUser"), security(agent.spec, agent.container, "runAsGroup")
    if not isinstance(uid, int) or not isinstance(gid, int) or uid == 0:
        fail("the agent must run with a numeric non-root runAsUser and a runAsGroup")
    if image_user() != f"{uid}:{gid}":
        fail(f"the image's user {image_user()} (scripts/oci_image.py) differs from the DaemonSet's {uid}:{gid}")
    print(f"ok: the agent runs as {uid}:{gid}, the image's user")
    served = agent.setting("socket", "VAULTLET_SOCKET", "")
    socket_volume = mount_for(agent.spec, agent.container, posixpath.dirname(served))[1]["name"]
    preparers = [
        c for c in agent.spec.get("initContainers") or []
        if any(m["name"] == socket_volume for m in c.get("volumeMounts") or [])
    ]
    if len(preparers) != 1 or subcommand(preparers[0]) != "prepare-dirs":
        fail(f"expected one init container running `vaultlet prepare-dirs` on volume {socket_volume}")
    init, args = preparers[0], preparers[0]["args"]
    given = (option(args, "uid"), option(args, "gid"))
    if given != (str(uid), str(gid)):
        fail(f"init container {init['name']} gives the directories to {given[0]}:{given[1]}, the agent runs as {uid}:{gid}")
    socket_dir = next(m["mountPath"] for m in init["volumeMounts"] if m["name"] == socket_volume)
    if posixpath.normpath(socket_dir) not in (posixpath.normpath(a) for a in args[1:] if not a.startswith("-")):
        fail(f"init container {init['name']} does not prepare the socket directory {socket_dir}: {args}")
    print(f"ok: init container {init['name']} gives the socket directory to {uid}:{gid} (vaultlet prepare-dirs)")
    return uid, gid


def check_csi(objs: List[Obj], agent: Agent, socket: str, host_socket: str) -> Tuple[str, str]:
    """The CSI driver that hands pods the agent's socket directory: the CSIDriver
    the plugin's code names, the plugin publishing the agent's socket directory,
    registered with kubelet where it listens, and the one privileged container.
    Returns (driver name, the directory on the node its volumes show)."""
    driver = rust_const("csi/src/lib.rs", "DRIVER_NAME")
    drivers = [o for o in objs if o["kind"] == "CSIDriver" and o["metadata"]["name"] == driver]
    if len(drivers) != 1:
        fail(f"no CSIDriver {driver} (DRIVER_NAME in csi/src/lib.rs)")
    spec = drivers[0]["spec"]
    if (spec.get("volumeLifecycleModes"), spec.get("attachRequired"), spec.get("podInfoOnMount")) != (["Ephemeral"], False, True):
        fail(f"CSIDriver {driver}: the plugin serves ephemeral inline volumes, attaches nothing and needs the pod "
             f"info (kubelet sends csi.storage.k8s.io/ephemeral only with podInfoOnMount): {spec}")
    containers = agent.spec["containers"] + (agent.spec.get("initContainers") or [])
    plugins = [c for c in containers if subcommand(c) == "csi"]
    if len(plugins) != 1:
        fail(f"{name(agent.ds)}: expected one container running `vaultlet csi`")
    plugin, args = plugins[0], plugins[0]["args"]
    privileged = [c["name"] for c in containers if (c.get("securityContext") or {}).get("privileged")]
    if privileged != [plugin["name"]]:
        fail(f"{name(agent.ds)}: the CSI plugin must be the one privileged container; privileged: {privileged}")
    # checkov's probe checks are skipped for the DaemonSet because of the plugin.
    missing = [p for p in ("livenessProbe", "readinessProbe") if p not in agent.container]
    if missing:
        fail(f"the agent container lacks {', '.join(missing)}")
    pods, volume, _ = mount_for(agent.spec, plugin, "/var/lib/kubelet/pods")
    if pods.get("mountPropagation") != "Bidirectional" or volume.get("hostPath", {}).get("path") != "/var/lib/kubelet/pods":
        fail("the CSI plugin must mount the node's /var/lib/kubelet/pods with Bidirectional propagation: "
             "otherwise its mounts never reach kubelet and the pods")
    published = host_path(agent.spec, plugin, option(args, "agent-socket") or socket)
    if published != host_socket:
        fail(f"the CSI plugin publishes the directory of {published} on the node; the agent's socket is {host_socket}")
    endpoint = host_path(agent.spec, plugin, option(args, "endpoint") or rust_const("csi/src/lib.rs", "DEFAULT_ENDPOINT"))
    registrars = [c for c in containers if option(c.get("args") or [], "kubelet-registration-path")]
    if len(registrars) != 1:
        fail(f"{name(agent.ds)}: expected one node-driver-registrar (--kubelet-registration-path)")
    registrar = registrars[0]["args"]
    registered = option(registrar, "kubelet-registration-path")
    dialed = host_path(agent.spec, registrars[0], option(registrar, "csi-address") or "")
    if registered != endpoint or dialed != endpoint:
        fail(f"the CSI plugin listens on {endpoint} on the node; the registrar registers {registered} and dials {dialed}")
    print(f"ok: CSIDriver {driver} (ephemeral, pod info): the plugin publishes {posixpath.dirname(published)}, "
          f"is registered at {endpoint} and is the one privileged container")
    return driver, posixpath.dirname(published)


def check_caller(
    obj: Obj, container: Obj, socket: str, host_socket: str, csi: Tuple[str, str], token_file: str, audience: str,
    owner: Tuple[int, int], overrides: List[str],
) -> None:
    """A client container finds the socket and the token where the clients look by default."""
    try:
        find_agent(obj, container, socket, host_socket, csi, token_file, audience, owner, overrides)
    except Failure as e:
        fail(str(e) if str(e).startswith(name(obj)) else f"{name(obj)}: {e}")


def find_agent(
    obj: Obj, container: Obj, socket: str, host_socket: str, csi: Tuple[str, str], token_file: str, audience: str,
    owner: Tuple[int, int], overrides: List[str],
) -> None:
    spec, who = pod_spec(obj), f"{name(obj)} container {container['name']}"
    for var in overrides:
        if env_value(container, var) is not None:
            fail(f"{who} sets {var}: the example must work with the clients' defaults")
    if container.get("envFrom"):
        fail(f"{who}: envFrom could set {' or '.join(overrides)}; the example must use the clients' defaults")
    driver, published = csi
    _, volume, inside = mount_for(spec, container, socket)
    if (volume.get("csi") or {}).get("driver") != driver:
        fail(f"{who}: {socket} is not on a {driver} volume; pods reach the agent through the CSI driver's "
             "read-only volume, never a hostPath (writable, and refused below Pod Security privileged)")
    if volume["csi"].get("readOnly") is not True:
        fail(f"{who}: the {driver} volume {volume['name']} lacks readOnly: true, and the driver refuses it")
    seen = posixpath.normpath(posixpath.join(published, inside))
    if seen != host_socket:
        fail(f"{who}: {socket} is {seen} on the node, the agent's socket is {host_socket}")
    _, volume, inside = mount_for(spec, container, token_file)
    sources = (volume.get("projected") or {}).get("sources") or []
    tokens = [s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s]
    token = next((t for t in tokens if posixpath.normpath(t["path"]) == inside), None)
    if token is None:
        fail(f"{who}: {token_file} is not a projected ServiceAccount token")
    assert token is not None
    if token.get("audience") != audience:
        fail(f"{who}: the token's audience is {token.get('audience')!r}, the agent accepts {audience!r}")
    uid, gid = owner
    run_uid = security(spec, container, "runAsUser")
    groups = {security(spec, container, "runAsGroup"), (spec.get("securityContext") or {}).get("fsGroup")}
    groups |= set((spec.get("securityContext") or {}).get("supplementalGroups") or [])
    if run_uid != uid and gid not in groups:
        fail(f"{who}: runs as {run_uid} without group {gid}: the socket (0660 {uid}:{gid}) is closed to it")
    print(f"ok: {who} reaches {socket} ({seen} on the node, group {gid}) "
          f"and presents {token_file} (audience {audience})")


def check_flags(objs: List[Obj]) -> None:
    for obj in objs:
        if obj["kind"] not in WORKLOADS:
            continue
        spec = pod_spec(obj)
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if not is_vaultlet_image(c["image"]):
                continue
            if c.get("command"):
                fail(f"{name(obj)} container {c['name']}: use args, not command (the image's entrypoint is vaultlet)")
            args = c.get("args") or []
            if not args:
                fail(f"{name(obj)} container {c['name']}: no subcommand")
            known = subcommand_flags(args[0])
            used = {a[2:].split("=", 1)[0] for a in args if a.startswith("--")}
            if used - known:
                fail(f"{name(obj)}: `vaultlet {args[0]}` has no flag {', '.join('--' + f for f in sorted(used - known))}")
            print(f"ok: {name(obj)} runs `vaultlet {args[0]}` with known flags only ({len(used)})")


def agree(deploy_file: str, example_files: List[str]) -> None:
    socket = client_default("client-rust/src/client.rs", "DEFAULT_SOCKET")
    token_file = client_default("client-rust/src/token.rs", "DEFAULT_TOKEN_FILE")
    overrides = [
        client_default("client-rust/src/client.rs", "SOCKET_ENV"),
        client_default("client-rust/src/token.rs", "TOKEN_FILE_ENV"),
    ]
    print(f"the clients' defaults: socket {socket}, token {token_file} (overridden by {', '.join(overrides)})")
    objs = load(deploy_file)
    agent = Agent(objs)
    print("ok: the agent's config file has only keys `vaultlet serve` knows")
    audience = agent.setting("audience", "VAULTLET_AUDIENCE", rust_const("agent/src/config.rs", "DEFAULT_AUDIENCE"))
    host_socket = check_agent(agent, socket)
    owner = check_ownership(agent)
    csi = check_csi(objs, agent, socket, host_socket)
    check_flags(objs)
    callers = 0
    for path in example_files:
        examples = load(path)
        check_flags(examples)
        for obj in examples:
            if obj["kind"] not in WORKLOADS:
                continue
            if inject_annotation(obj) == "true":
                check_injected(objs, examples, obj)
                callers += 1
                continue
            for c in pod_spec(obj)["containers"]:
                check_caller(obj, c, socket, host_socket, csi, token_file, audience, owner, overrides)
                callers += 1
    if not callers:
        fail("no example workload found")


INJECT_ANNOTATION = "vaultlet.io/inject"


def pod_metadata(obj: Obj) -> Obj:
    if obj["kind"] == "Pod":
        return obj["metadata"]
    spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    return spec["template"].get("metadata") or {}


def inject_annotation(obj: Obj) -> Optional[str]:
    return (pod_metadata(obj).get("annotations") or {}).get(INJECT_ANNOTATION)


def check_injected(deploy: List[Obj], examples: List[Obj], obj: Obj) -> None:
    """An annotated workload is one the webhook is called for."""
    configs = [o for o in deploy if o["kind"] == "MutatingWebhookConfiguration"]
    if len(configs) != 1:
        fail(f"{name(obj)} asks for injection, but the deploy rendering has {len(configs)} webhook configurations "
             "(render it with the inject component)")
    webhook = configs[0]["webhooks"][0]
    namespace = obj["metadata"].get("namespace")
    ns = next((o for o in examples if o["kind"] == "Namespace" and o["metadata"]["name"] == namespace), None)
    if ns is None:
        fail(f"{name(obj)}: its namespace {namespace} is not in the example")
    assert ns is not None
    labels = ns["metadata"].get("labels") or {}
    selector = webhook.get("namespaceSelector") or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            fail(f"{name(obj)}: namespace {namespace} lacks the label {key}: {value} the webhook selects")
    for expr in selector.get("matchExpressions") or []:
        if expr["key"] == "kubernetes.io/metadata.name" and expr["operator"] == "NotIn" and namespace in expr["values"]:
            fail(f"{name(obj)}: the webhook never serves namespace {namespace}")
    pod_labels = pod_metadata(obj).get("labels") or {}
    for expr in (webhook.get("objectSelector") or {}).get("matchExpressions") or []:
        if expr["operator"] == "NotIn" and pod_labels.get(expr["key"]) in expr["values"]:
            fail(f"{name(obj)}: its label {expr['key']} keeps the webhook away")
    print(f"ok: {name(obj)} asks the webhook ({INJECT_ANNOTATION}), which serves namespace {namespace}")


# --------------------------------------------------------------- monitoring

OPERATOR_GROUPS = ("monitoring.coreos.com/", "cert-manager.io/")
SEVERITIES = {"critical", "warning"}


def split_operator_kinds(rendered: str, out: str) -> None:
    objs = load(rendered)
    operator = [o for o in objs if o["apiVersion"].startswith(OPERATOR_GROUPS)]
    if not operator:
        fail(f"{rendered}: no object of {' or '.join(OPERATOR_GROUPS)}")
    Path(rendered).write_text(yaml.safe_dump_all([o for o in objs if o not in operator], sort_keys=False))
    Path(out).write_text(yaml.safe_dump_all(operator, sort_keys=False))
    print(f"ok: {', '.join(name(o) for o in operator)} set apart from kubernetes-validate (no schema for their CRDs)")


def one(objs: List[Obj], kind: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind]
    if len(found) != 1:
        fail(f"expected one {kind} in deploy/monitoring, found {len(found)}")
    return found[0]


def monitoring(deploy_file: str, operator_file: str) -> None:
    agent, objs = Agent(load(deploy_file)), load(operator_file)
    monitor, rule = one(objs, "PodMonitor"), one(objs, "PrometheusRule")
    labels = agent.ds["spec"]["template"]["metadata"]["labels"]
    namespace = agent.ds["metadata"]["namespace"]
    spec = monitor["spec"]
    if monitor["metadata"]["namespace"] != namespace:
        fail(f"{name(monitor)} is in namespace {monitor['metadata']['namespace']}, the agent in {namespace}")
    selector = spec["selector"]["matchLabels"]
    if any(labels.get(k) != v for k, v in selector.items()):
        fail(f"{name(monitor)} selects {selector}; the agent's pods are labelled {labels}")
    ports = {p["name"]: p["containerPort"] for p in agent.container.get("ports") or []}
    default = rust_const("agent/src/config.rs", "DEFAULT_ADMIN_LISTEN")
    admin = agent.setting("admin-listen", "VAULTLET_ADMIN_LISTEN", default).rsplit(":", 1)[-1]
    served = re.findall(r'^\s*"(/\w+)" =>', (ROOT / "agent/src/admin.rs").read_text(), re.M)
    for endpoint in spec["podMetricsEndpoints"]:
        if str(ports.get(endpoint["port"])) != admin:
            fail(f"{name(monitor)} scrapes port {endpoint['port']!r}; the agent's admin port is {admin} ({ports})")
        if endpoint.get("path", "/metrics") not in served:
            fail(f"{name(monitor)} scrapes {endpoint.get('path')}; agent/src/admin.rs serves {served}")
    job = labels.get(spec.get("jobLabel", ""))
    if job is None:
        fail(f"{name(monitor)}: jobLabel {spec.get('jobLabel')!r} is not a label of the agent's pods")
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    for r in rules:
        selected = set(re.findall(r'\bjob="([^"]*)"', r["expr"]))
        if selected - {job}:
            fail(f"alert {r['alert']} selects job {sorted(selected)}; the PodMonitor names the job {job!r}")
        annotations = r.get("annotations") or {}
        if r.get("labels", {}).get("severity") not in SEVERITIES or not {"summary", "description"} <= set(annotations):
            fail(f"alert {r['alert']}: needs a severity ({', '.join(sorted(SEVERITIES))}), a summary and a description")
    print(f"ok: {name(monitor)} scrapes the agent's pods on port {admin} as job {job!r}; "
          f"{len(rules)} alerts select that job and have a severity, a summary and a description")


# ------------------------------------------------------------------ the chart without CSI


def without_csi(without_file: str, default_file: str) -> None:
    without, default = load(without_file), load(default_file)

    def key(o: Obj) -> Tuple[str, str, str]:
        return (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])

    drivers = [name(o) for o in without if o["kind"] == "CSIDriver"]
    if drivers:
        fail(f"{without_file}: {', '.join(drivers)} with csi.enabled=false")
    for o in without:
        if o["kind"] in WORKLOADS:
            spec = pod_spec(o)
            privileged = [c["name"] for c in spec["containers"] + (spec.get("initContainers") or [])
                          if (c.get("securityContext") or {}).get("privileged")]
            if privileged:
                fail(f"{without_file}: {name(o)} has privileged containers with csi.enabled=false: {privileged}")
    expected = sorted(key(o) for o in default if o["kind"] != "CSIDriver")
    if sorted(map(key, without)) != expected:
        fail(f"{without_file}: not the objects of the default render but the CSIDriver: {sorted(map(key, without))}")
    old = {key(o): o for o in default}
    for o in without:
        if o["kind"] != "DaemonSet":
            if o != old[key(o)]:
                fail(f"{without_file}: {name(o)} differs from the default render")
            continue
        was, spec, was_spec = old[key(o)], pod_spec(o), pod_spec(old[key(o)])
        containers = {c["name"] for c in spec["containers"]}
        gone = [c for c in was_spec["containers"] if c["name"] not in containers]
        if sorted(c["name"] for c in gone) != ["csi-plugin", "node-driver-registrar"]:
            fail(f"{name(o)}: csi.enabled=false must leave out csi-plugin and node-driver-registrar, "
                 f"not {sorted(c['name'] for c in gone)}")
        if [c for c in spec["containers"] if subcommand(c) == "csi"
                or option(c.get("args") or [], "kubelet-registration-path")]:
            fail(f"{name(o)}: a CSI container is left with csi.enabled=false")
        mounted = {m["name"] for c in spec["containers"] + (spec.get("initContainers") or [])
                   for m in c.get("volumeMounts") or []}
        volumes = {v["name"] for v in spec.get("volumes") or []}
        gone_volumes = {v["name"] for v in was_spec.get("volumes") or []} - volumes
        if mounted != volumes:
            fail(f"{name(o)}: volumes {sorted(volumes ^ mounted)} are not both declared and mounted "
                 "with csi.enabled=false")
        used = {m["name"] for c in gone for m in c.get("volumeMounts") or []}
        if not gone_volumes <= used:
            fail(f"{name(o)}: csi.enabled=false leaves out volumes the CSI containers do not use: "
                 f"{sorted(gone_volumes - used)}")
        annotations = o["metadata"].get("annotations") or {}
        for k, v in annotations.items():
            if k.startswith(SKIP_PREFIX) and any(c["name"] in v for c in gone):
                fail(f"{name(o)}: skip {k} speaks of a container it no longer has: {v}")
        # The rest as in the default render: only the CSI containers, their volumes
        # and skips are gone.
        rest = json.loads(json.dumps(was))
        rest_spec = pod_spec(rest)
        rest_spec["containers"] = [c for c in rest_spec["containers"] if c["name"] in containers]
        rest_spec["volumes"] = [v for v in rest_spec.get("volumes") or [] if v["name"] in volumes]
        rest["metadata"]["annotations"] = {
            k: v for k, v in (rest["metadata"].get("annotations") or {}).items() if k in annotations
        }
        if rest != o:
            fail(f"{name(o)}: differs from the default render beyond the CSI containers, volumes and skips")
        print(f"ok: {name(o)} without CSI: no {', '.join(c['name'] for c in gone)}, volumes "
              f"{', '.join(sorted(gone_volumes))} and {len(was['metadata'].get('annotations') or {}) - len(annotations)} "
              f"skips; no CSIDriver, no privileged container")


# ------------------------------------------------------------------ checkov


def strip_skips(src: str, dst: str) -> None:
    """Copies the rendered manifests and the Dockerfiles without their skips."""
    for path in sorted(Path(src).rglob("*")):
        target = Path(dst) / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".yaml":
            docs = load(str(path))
            for d in docs:
                annotations = d.get("metadata", {}).get("annotations") or {}
                for key in [k for k in annotations if k.startswith(SKIP_PREFIX)]:
                    del annotations[key]
            target.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        else:
            lines = path.read_text().splitlines(keepends=True)
            target.write_text("".join(l for l in lines if not re.match(r"#\s*checkov:skip=", l)))


def reports(path: str) -> Dict[str, Obj]:
    """checkov's JSON output by framework (one report is not wrapped in a list)."""
    data = json.loads(Path(path).read_text())
    return {r["check_type"]: r for r in (data if isinstance(data, list) else [data])}


def skips(with_path: str, without_path: str) -> None:
    with_skips, without_skips = reports(with_path), reports(without_path)
    if set(with_skips) != {"kubernetes", "dockerfile"}:
        fail(f"{with_path}: expected checkov's kubernetes and dockerfile reports, got {sorted(with_skips)}")
    problems: List[str] = []
    for framework, rep in sorted(with_skips.items()):
        summary, results = rep["summary"], rep["results"]
        print(f"checkov {summary['checkov_version']} {framework}: passed {summary['passed']}, "
              f"failed {summary['failed']}, skipped {summary['skipped']}, "
              f"parsing errors {summary['parsing_errors']}, resources {summary['resource_count']}")
        problems += [f"FAILED {r['check_id']} {r['resource']}: {r['check_name']}" for r in results["failed_checks"]]
        problems += [f"cannot parse {e}" for e in results.get("parsing_errors", [])]
        without = without_skips.get(framework, {"results": {"failed_checks": []}})
        # file_path is relative to the directory checkov was given (an absolute one).
        needed = {(r["check_id"], r["file_path"], r["resource"]) for r in without["results"]["failed_checks"]}
        for r in results["skipped_checks"]:
            reason = (r["check_result"].get("suppress_comment") or "").strip()
            if len(reason) < 10:
                problems.append(f"skip of {r['check_id']} on {r['resource']} has no reason")
            if (r["check_id"], r["file_path"], r["resource"]) not in needed:
                problems.append(f"skip of {r['check_id']} on {r['resource']} in {r['file_path']} is not needed: "
                                "it passes without it")
    if problems:
        fail("checkov:\n  " + "\n  ".join(problems))
    total = sum(r["summary"]["skipped"] for r in with_skips.values())
    print(f"ok: no failed check; each of the {total} skips has a reason and is needed")


def main(argv: List[str]) -> int:
    try:
        if len(argv) >= 3 and argv[1] == "agree":
            agree(argv[2], argv[3:])
        elif len(argv) == 4 and argv[1] == "split-operator-kinds":
            split_operator_kinds(argv[2], argv[3])
        elif len(argv) == 4 and argv[1] == "monitoring":
            monitoring(argv[2], argv[3])
        elif len(argv) == 4 and argv[1] == "without-csi":
            without_csi(argv[2], argv[3])
        elif len(argv) == 4 and argv[1] == "strip-skips":
            strip_skips(argv[2], argv[3])
        elif len(argv) == 4 and argv[1] == "skips":
            skips(argv[2], argv[3])
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Failure as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
