"""Writes vaultlet's OCI image (an OCI image layout directory) from a static binary.

  oci_image.py BINARY CA_BUNDLE OUT_DIR --version V --revision R --created EPOCH

One layer: the binary at /usr/local/bin/vaultlet, the CA bundle (for OpenBao's and
the API server's TLS where no CA file is given), /etc/passwd and /etc/group naming
the agent's user, and an empty /tmp. No shell, no package manager. The config runs
vaultlet as that user (numeric, so that runAsNonRoot can verify it).

The same inputs give the same bytes, hence the same digest: entries are sorted,
owned by 0:0 with fixed modes and the commit's time, the gzip stream has no name
and no time, and the config's dates are the commit's. scripts/image calls this;
skopeo copies the result to a registry.

Prints the manifest's digest.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Tuple

# The agent's user and group: deploy/daemonset.yaml runs it as these
# (deploy/check_manifests.py reads them from here).
USER = 10750
GROUP = 10750

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def layer(binary: Path, ca_bundle: Path, mtime: int) -> bytes:
    """The one layer, as an uncompressed tar."""
    files: List[Tuple[str, bytes, int]] = [
        ("etc/group", f"root:x:0:\nvaultlet:x:{GROUP}:\n".encode(), 0o644),
        ("etc/passwd", (f"root:x:0:0:root:/root:/sbin/nologin\n"
                        f"vaultlet:x:{USER}:{GROUP}:vaultlet:/nonexistent:/sbin/nologin\n").encode(), 0o644),
        ("etc/ssl/certs/ca-certificates.crt", ca_bundle.read_bytes(), 0o644),
        ("usr/local/bin/vaultlet", binary.read_bytes(), 0o755),
    ]
    dirs: Dict[str, int] = {"etc": 0o755, "etc/ssl": 0o755, "etc/ssl/certs": 0o755, "tmp": 0o1777, "usr": 0o755,
                            "usr/local": 0o755, "usr/local/bin": 0o755}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        entries = [(d, None, m) for d, m in dirs.items()] + [(n, c, m) for n, c, m in files]
        for name, content, mode in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, mtime, 0, 0, "", ""
            if content is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def blob(out: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = out / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


def canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("binary", type=Path)
    p.add_argument("ca_bundle", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--version", required=True)
    p.add_argument("--revision", required=True)
    p.add_argument("--created", type=int, required=True, help="seconds since the epoch (the commit's time)")
    args = p.parse_args()

    created = datetime.fromtimestamp(args.created, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    tar = layer(args.binary, args.ca_bundle, args.created)
    gz = io.BytesIO()
    # No file name and time 0 in the gzip header: the same tar, the same bytes.
    with gzip.GzipFile(fileobj=gz, mode="wb", compresslevel=9, mtime=0, filename="") as z:
        z.write(tar)
    compressed = gz.getvalue()

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    (args.out / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layer_digest = blob(args.out, compressed)
    labels = {
        "org.opencontainers.image.title": "vaultlet",
        "org.opencontainers.image.description": "Node-local secrets agent for Kubernetes",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.source": "https://github.com/vaultlet/vaultlet",
        "org.opencontainers.image.version": args.version,
        "org.opencontainers.image.revision": args.revision,
        "org.opencontainers.image.created": created,
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": created,
        "config": {
            "User": f"{USER}:{GROUP}",
            "Entrypoint": ["/usr/local/bin/vaultlet"],
            "Cmd": ["--help"],
            "Env": ["PATH=/usr/local/bin", "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar).hexdigest()}"]},
        "history": [{"created": created, "created_by": "scripts/image"}],
    }
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": blob(args.out, config_bytes), "size": len(config_bytes)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": len(compressed)}],
        "annotations": {k: v for k, v in labels.items() if k.endswith(("version", "revision", "created"))},
    }
    manifest_bytes = canonical(manifest)
    manifest_digest = blob(args.out, manifest_bytes)
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": args.version},
        }],
    }
    (args.out / "index.json").write_bytes(canonical(index))
    print(manifest_digest)


if __name__ == "__main__":
    main()
