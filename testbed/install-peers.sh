#!/usr/bin/env bash
# Installs the Debian packages the test suite's real peers come from (see ../shared/PEERS.md).
# Idempotent: does nothing when all are present. Not root and something missing: prints the
# exact command and fails, so a missing peer never turns into a silently skipped test.
set -euo pipefail

PACKAGES=(
  openssh-server openssh-client rsync postgresql
  nagios4-core monitoring-plugins-basic monitoring-plugins-standard liburiparser1
  icinga2-bin icinga2-common riemann-c-client clojure wrk hyperfine time openssl
  # a real Prometheus text-format parser reads usersvc's /metrics (Debian's /usr/bin/python3)
  python3-prometheus-client
  # check_jsonrpc over TLS (an expiring certificate, a required client certificate) and a proxy
  stunnel4 tinyproxy
  # the deployer follows Capistrano on a host and Capistrano follows it (3.17, Ruby from Debian);
  # git: Capistrano deploys from a repository, the deployer from a commit with --ref
  capistrano git
  # a network namespace and a veth pair put the deployer's hosts behind a bastion
  iproute2
  # systemd-analyze verify checks the shipped units (systemd is not PID 1 here)
  systemd
  # the completions `make install` installs are loaded by real shells (bash is always there); man
  # renders the man pages
  zsh fish man-db
  # README's first calls to usersvc are curl commands; the test runs them as written
  curl
  # build dependencies: the deployer's ssh2 compiles libssh2 against the system OpenSSL
  libssl-dev pkg-config
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "test peers missing: ${missing[*]}" >&2
  echo "install them as root:  apt-get update && DEBIAN_FRONTEND=noninteractive $cmd" >&2
  exit 1
fi
echo "installing test peers: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Another apt run at the same time can make an install fail: retry once.
$cmd || { sleep 5; $cmd; }
