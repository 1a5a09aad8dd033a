#!/usr/bin/env python3
"""Generates the gRPC stubs of the wire API into the package, or checks them.

    python scripts/generate.py          # write src/vaultlet/v1/ from proto/
    python scripts/generate.py --check  # fail if the committed stubs are stale

Run it with the interpreter of a virtualenv that has requirements-dev.txt
installed: the grpcio-tools version is written into the stubs (they refuse an
older grpcio at import), so only the pinned one gives the committed output.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CLIENT_DIR = Path(__file__).resolve().parent.parent
PROTO_ROOT = CLIENT_DIR.parent / "proto"
PROTO = "vaultlet/v1/secrets.proto"
PACKAGE_DIR = CLIENT_DIR / "src" / "vaultlet" / "v1"

INIT = '''"""Generated messages and stubs of the vaultlet.v1 wire API (proto/vaultlet/v1).

Written by client-python/scripts/generate.py; do not edit.
"""
'''

# protoc names the proto package (`vaultlet.v1`) in its imports; inside this
# package the stubs find each other relatively, wherever the package is installed.
ABSOLUTE_IMPORT = re.compile(r"^from vaultlet\.v1 import ", re.MULTILINE)


def protoc_output(tmp: Path) -> dict[str, str]:
    """Runs grpcio-tools' protoc and returns file name -> text of the stubs."""
    # Console scripts of the virtualenv sit next to its interpreter, which need
    # not be on PATH.
    mypy_grpc = Path(sys.executable).parent / "protoc-gen-mypy_grpc"
    if not mypy_grpc.exists():
        sys.exit(f"{mypy_grpc} not found: install requirements-dev.txt into this interpreter's virtualenv")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--python_out={tmp}",
        f"--pyi_out={tmp}",
        f"--grpc_python_out={tmp}",
        f"--plugin=protoc-gen-mypy_grpc={mypy_grpc}",
        f"--mypy_grpc_out={tmp}",
        PROTO,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"protoc failed ({result.returncode}):\n{result.stderr}")
    files = {"__init__.py": INIT}
    for path in sorted((tmp / "vaultlet" / "v1").iterdir()):
        text = path.read_text()
        if path.name.startswith("secrets_pb2_grpc"):
            text, n = ABSOLUTE_IMPORT.subn("from . import ", text)
            if n == 0:
                sys.exit(f"{path.name}: no `from vaultlet.v1 import` to make relative; did the generator change?")
        files[path.name] = text
    return files


def committed() -> dict[str, str]:
    if not PACKAGE_DIR.is_dir():
        return {}
    return {p.name: p.read_text() for p in sorted(PACKAGE_DIR.iterdir()) if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare with a fresh generation instead of writing")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vaultlet-stubs-") as tmp:
        fresh = protoc_output(Path(tmp))
    if args.check:
        old = committed()
        if old == fresh:
            print(f"generated stubs are up to date ({len(fresh)} files in {PACKAGE_DIR.relative_to(CLIENT_DIR)})")
            return 0
        for name in sorted(old.keys() | fresh.keys()):
            if name not in fresh:
                print(f"{name}: committed but not generated")
            elif name not in old:
                print(f"{name}: generated but not committed")
            elif old[name] != fresh[name]:
                diff = difflib.unified_diff(
                    old[name].splitlines(keepends=True),
                    fresh[name].splitlines(keepends=True),
                    f"committed/{name}",
                    f"generated/{name}",
                )
                sys.stdout.writelines(diff)
        print(
            f"\nthe stubs in {PACKAGE_DIR} are stale: run `python client-python/scripts/generate.py` and commit the result",
            file=sys.stderr,
        )
        return 1
    PACKAGE_DIR.mkdir(parents=True, exist_ok=True)
    for stale in set(committed()) - set(fresh):
        (PACKAGE_DIR / stale).unlink()
    for name, text in fresh.items():
        (PACKAGE_DIR / name).write_text(text)
    print(f"wrote {len(fresh)} files to {PACKAGE_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
