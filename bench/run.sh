#!/usr/bin/env bash
# make bench: every tool beside its peer, in one run each; medians and ratios (ours/peer).
set -euo pipefail
cd "$(dirname "$0")"
for b in usersvc usersvc_store usersvc_scale check_jsonrpc riemann_probe deployer deployer_fleet deploy_under_load faults; do
  echo "== $b"
  "./$b.sh"
  echo
done
