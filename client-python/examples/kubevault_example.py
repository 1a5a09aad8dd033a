"""The seeds' `kubevault_example.py`, rewritten on vaultlet.

The original gave every service a Kubernetes client, a Vault login and a
Transit decrypt at start-up:

    sm = SecretManager({"SOURCE": "KUBEVAULT", "vault_url": ..., "role": ..., ...})
    secrets = sm.read_secrets("matrix-secrets", "default", "SECRET", "secrets.json", "aes256-key")

With vaultlet the node's agent holds the Vault side (one login and one decrypt
per node, not per pod) and checks who is asking from the pod's projected
ServiceAccount token; the service reads its secrets over a Unix socket:

    from vaultlet import Client
    with Client() as vaultlet:
        secrets = vaultlet.get_secrets(REF)[REF]

Usage: python kubevault_example.py [REF]   (default: matrix-secrets:secrets.json,
the seeds' Secret and data key in the pod's own namespace). Against a
development agent (`vaultlet dev --secrets-dir examples/secrets`), try `app`.
"""

from __future__ import annotations

import sys
from typing import List

from vaultlet import Client, VaultletError

DEFAULT_REF = "matrix-secrets:secrets.json"


def main(argv: List[str]) -> int:
    ref = argv[1] if len(argv) > 1 else DEFAULT_REF
    try:
        with Client() as vaultlet:
            secrets = vaultlet.get_secrets(ref)[ref]
    except VaultletError as e:
        print(f"cannot read {ref}: {e}", file=sys.stderr)
        return 1
    # `secrets` is a read-only mapping, used like the seeds' dictionary:
    # secrets["db_password"]. Values stay out of output and logs.
    print(f"read {ref} (revision {secrets.revision}): fields {', '.join(sorted(secrets))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
