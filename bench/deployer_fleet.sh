#!/usr/bin/env bash
# The deployer at fleet scale, against real sshd servers on this machine: as many as the largest
# of FLEET (default "1 50 200"; not HOSTS, which Capistrano reads as a filter), on 127.1.x.y, each
# in a mount namespace of its own where its own directory is mounted on one shared path, so every
# host has the same deploy_to, as a real fleet does. An application of FILES files (default 200,
# 10 KB each): the first deploy and one file changed at each count, then the largest count
# through a bastion (one more sshd), one host behind a link with RTT_MS (default 50) of
# round-trip delay, and an all-or-nothing check at the largest count (one host's before_publish
# hook fails: no host may change). CAP_HOSTS (default 8, 0 for none) of the same hosts are
# deployed by Capistrano 3 as well. Prints medians of RUNS (3), the deployer's CPU per host, peak
# RSS, most open files, connections and remote commands per host (what `deployer -v` counts) and
# the sessions the bastion saw (its own log).
set -euo pipefail
cd "$(dirname "$0")"
export RUNS=${RUNS:-3} FILES=${FILES:-200} FLEET=${FLEET:-"1 50 200"} RTT_MS=${RTT_MS:-50}
export CAP_HOSTS=${CAP_HOSTS:-8}
for tool in /usr/sbin/sshd ssh-keygen unshare python3 git; do
  command -v "$tool" >/dev/null || { echo "$tool missing: make peers" >&2; exit 1; }
done
[ "$CAP_HOSTS" = 0 ] || command -v cap >/dev/null || { echo "cap missing: make peers (or CAP_HOSTS=0)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (mount namespaces; sshd logs in as root)" >&2; exit 1; }
if [ -z "${DEPLOYER:-}" ]; then
  cargo build -q --release --manifest-path ../Cargo.toml -p deployer
  DEPLOYER=$PWD/../target/release/deployer
fi
export DEPLOYER

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT
mkdir -p /run/sshd "$tmp/view"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/client"
ssh-keygen -q -t ed25519 -N '' -f "$tmp/host"
cp "$tmp/client.pub" "$tmp/authorized_keys"; chmod 644 "$tmp/authorized_keys"
# The hosts' login shell reads root's ~/.bashrc; on this machine it starts pyenv (~0.3 s a
# command), a cost of this machine, not of a host: each namespace mounts an empty one over it.
: > "$tmp/bashrc"
max=0; for n in $FLEET; do [ "$n" -gt "$max" ] && max=$n; done
port=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.1.0.1',0)); print(s.getsockname()[1])")
sshd_config() { # ip log
  cat <<EOF
Port $port
ListenAddress $1
HostKey $tmp/host
PidFile none
AuthorizedKeysFile $tmp/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
EOF
}
: > "$tmp/known_hosts"
for i in $(seq 1 "$max"); do
  ip=127.1.$((i / 250)).$((i % 250 + 1)); d=$tmp/h$i; mkdir -p "$d"
  sshd_config "$ip" > "$d/config"
  unshare --mount --propagation private sh -c \
    'mount --bind "$1" "$2" && mount --bind "$3" /root/.bashrc && exec /usr/sbin/sshd -D -f "$4" -E "$5"' \
    sh "$d" "$tmp/view" "$tmp/bashrc" "$d/config" "$d/log" &
  pids+=($!)
  echo "[$ip]:$port $(cut -d' ' -f1,2 "$tmp/host.pub")" >> "$tmp/known_hosts"
  echo "$ip:$port" >> "$tmp/hosts"
done
bastion=127.1.9.1
sshd_config "$bastion" > "$tmp/bastion.config"
/usr/sbin/sshd -D -f "$tmp/bastion.config" -E "$tmp/bastion.log" &
pids+=($!)
echo "[$bastion]:$port $(cut -d' ' -f1,2 "$tmp/host.pub")" >> "$tmp/known_hosts"
for a in $(cat "$tmp/hosts") "$bastion:$port"; do
  for _ in $(seq 200); do (exec 3<>"/dev/tcp/${a%:*}/${a#*:}") 2>/dev/null && break; sleep 0.05; done
done

python3 - "$tmp" "$bastion:$port" <<'PY'
import os, random, re, statistics, subprocess, sys, threading, time
tmp, bastion = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.getcwd())
from slow_link import known_hosts_for, slow_link
files, runs = int(os.environ["FILES"]), int(os.environ["RUNS"])
counts = [int(n) for n in os.environ["FLEET"].split()]
cap_hosts, rtt = int(os.environ["CAP_HOSTS"]), float(os.environ["RTT_MS"]) / 1000
hosts = open(f"{tmp}/hosts").read().split()
src, view = f"{tmp}/dist", f"{tmp}/view"
rng = random.Random(42)
for i in range(files):
    d = f"{src}/dir{i // 200:03}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/file{i % 200:03}.bin", "wb") as fh:
        fh.write(rng.randbytes(10_000))

def config(name, ssh_extra="", tables="", addresses=hosts):
    path = f"{tmp}/{name}.toml"
    with open(path, "w") as c:
        c.write(f'application = "bench"\ndeploy_to = "{view}/ours"\nsource = "dist"\nkeep_releases = 3\n'
                f'[ssh]\nuser = "root"\nidentity = "{tmp}/client"\nknown_hosts = "{tmp}/known_hosts"\n'
                f'{ssh_extra}\n')
        for a in addresses:
            c.write(f'[[hosts]]\naddress = "{a}"\n')
        c.write(tables)
    return path

direct = config("direct")
via_bastion = config("bastion", f'proxy_jump = "root@{bastion}"')
# One host's hook fails just before publish, after every host has staged its release.
failing = config("failing", tables='[hooks]\nbefore_publish = ["test ! -e ../../../BROKEN"]\n')

def ours(cfg, n):
    """One deployer run on the first n hosts: wall time, CPU per host, peak RSS, most open
    files (sampled), and the connections and commands it reports with -v."""
    sel = ",".join(hosts[:n])
    t = time.perf_counter()
    p = subprocess.Popen([os.environ["DEPLOYER"], "-c", cfg, "-v", "deploy", "--hosts", sel],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    fds, done = [0], threading.Event()
    def sample():
        while not done.is_set():
            try:
                fds[0] = max(fds[0], len(os.listdir(f"/proc/{p.pid}/fd")))
            except OSError:
                pass
            time.sleep(0.01)
    threading.Thread(target=sample, daemon=True).start()
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    done.set(); p.returncode = os.waitstatus_to_exitcode(status)
    m = re.search(r"ssh: (\d+) connections and (\d+) remote commands for (\d+) hosts", out)
    return {"code": p.returncode, "out": out, "wall": wall, "cpu": (ru.ru_utime + ru.ru_stime) / n,
            "rss": ru.ru_maxrss / 1024, "fds": fds[0],
            "conn": int(m[1]) / n if m else None, "cmds": int(m[2]) / n if m else None}

def ok(r, what):
    if r["code"] != 0:
        sys.exit(f"{what} failed:\n{r['out'][-3000:]}")
    return r

def fresh(n):
    subprocess.run(f"rm -rf {tmp}/h{{1..{n}}}/ours {tmp}/h{{1..{n}}}/cap", shell=True,
                   executable="/bin/bash", check=True)

counter = [0]
def change_one_file():
    counter[0] += 1
    with open(f"{src}/dir000/file{files // 2 % 200:03}.bin", "ab") as fh:
        fh.write(str(counter[0]).encode())

rows = []
def measure(label, cfg, n, first):
    rs = []
    for _ in range(runs):
        if first:
            fresh(n)
        else:
            change_one_file()
        os.sync()
        rs.append(ok(ours(cfg, n), f"{label}, {n} hosts"))
    med = lambda k: statistics.median(r[k] for r in rs)
    rows.append((f"{label}, {n} host{'s' if n > 1 else ''}", med("wall"), med("cpu") * 1000,
                 max(r["rss"] for r in rs), max(r["fds"] for r in rs), med("conn"), med("cmds")))

for n in counts:
    measure("first", direct, n, True)
    measure("one file changed", direct, n, False)

bastion_log = f"{tmp}/bastion.log"
logins = lambda: open(bastion_log).read().count("Accepted publickey")
before = logins()
measure("bastion: first", via_bastion, max(counts), True)
measure("bastion: one file changed", via_bastion, max(counts), False)
bastion_sessions = (logins() - before) / (2 * runs)

# One host behind a slow link: the same host's sshd through a delaying proxy.
ip, port = hosts[0].split(":")
p = slow_link(ip, port, rtt)
with open(f"{tmp}/known_hosts", "a") as fh:
    fh.write("\n".join(known_hosts_for(open(f"{tmp}/known_hosts").read().splitlines(), ip, port, p)) + "\n")
slow = config("slow", addresses=[f"{ip}:{p}"])
hosts_saved, hosts[:] = hosts[:], [f"{ip}:{p}"]
ok(ours(slow, 1), "deploy over the slow link")
measure(f"{int(rtt * 1000)} ms link: one file changed", slow, 1, False)
hosts[:] = hosts_saved

# All or nothing at the largest count: one host in the middle fails before publish.
n = max(counts)
ok(ours(direct, n), "deploy before the failing one")
live = lambda: [os.path.realpath(f"{tmp}/h{i}/ours/current") for i in range(1, n + 1)]
releases = lambda: sum(len(os.listdir(f"{tmp}/h{i}/ours/releases")) for i in range(1, n + 1))
was, kept = live(), releases()
open(f"{tmp}/h{n // 2 + 1}/BROKEN", "w").close()
change_one_file()
r = ours(failing, n)
os.remove(f"{tmp}/h{n // 2 + 1}/BROKEN")
changed = sum(a != b for a, b in zip(was, live()))
left = releases() - kept
aon = f"exit {r['code']}, {changed} of {n} hosts changed, {left} staged releases left"

cap_row = None
if cap_hosts:
    def git(*args, cwd=src):
        subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@example.com", *args],
                       cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    git("init", "-q", "-b", "main"); git("add", "-A"); git("commit", "-q", "-m", "tree")
    git("clone", "-q", "--bare", src, f"{tmp}/repo.git", cwd=tmp)
    git("remote", "add", "origin", f"{tmp}/repo.git")
    proj = f"{tmp}/cap"
    os.makedirs(f"{proj}/config/deploy")
    open(f"{proj}/Capfile", "w").write(
        'require "capistrano/setup"\nrequire "capistrano/deploy"\nrequire "capistrano/scm/git"\n'
        'install_plugin Capistrano::SCM::Git\n')
    open(f"{proj}/config/deploy.rb", "w").write(
        f'set :application, "bench"\nset :repo_url, "file://{tmp}/repo.git"\nset :branch, "main"\n'
        f'set :deploy_to, "{view}/cap"\nset :keep_releases, 3\n'
        f'set :format_options, log_file: "{tmp}/cap.log"\n'
        f'set :ssh_options, {{ keys: ["{tmp}/client"], auth_methods: ["publickey"], '
        f'verify_host_key: :always, user_known_hosts_file: "{tmp}/known_hosts" }}\n')
    with open(f"{proj}/config/deploy/fleet.rb", "w") as fh:
        for a in hosts[:cap_hosts]:
            h, pt = a.split(":")
            fh.write(f'server "{h}", port: {pt}, user: "root", roles: %w{{app}}\n')
    def cap_once():
        t = time.perf_counter()
        r = subprocess.run(["cap", "fleet", "deploy"], cwd=proj, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"cap deploy failed:\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
        return time.perf_counter() - t
    def commit_one_change():
        change_one_file(); git("commit", "-q", "-am", "one"); git("push", "-q", "origin", "main")
    fresh(cap_hosts)
    cap_first = cap_once()
    commit_one_change()
    cap_one = cap_once()
    fresh(cap_hosts); ours_first = ok(ours(direct, cap_hosts), "first")["wall"]
    commit_one_change()
    ours_one = ok(ours(direct, cap_hosts), "one file")["wall"]
    cap_row = (cap_first, cap_one, ours_first, ours_one)

print(f"tree: {files} files of 10 KB; medians of {runs} runs; hosts are sshd on this machine "
      f"({os.cpu_count()} cores shared with the deployer)")
print(f"{'case':<36} {'wall_s':>7} {'cpu_ms/host':>11} {'rss_MB':>7} {'fds':>5} {'conn/host':>9} {'cmds/host':>9}")
for name, wall, cpu, rss, fds, conn, cmds in rows:
    print(f"{name:<36} {wall:>7.2f} {cpu:>11.1f} {rss:>7.1f} {fds:>5} {conn or 0:>9.1f} {cmds or 0:>9.1f}")
print(f"bastion sessions per deploy of {max(counts)} hosts: {bastion_sessions:.1f}")
print(f"all or nothing, {max(counts)} hosts, one failing before publish: {aon}")
if cap_row:
    cf, co, of, oo = cap_row
    print(f"Capistrano on {cap_hosts} hosts (1 run): first {cf:.2f} s (ours {of:.2f} s, {of / cf:.3f}x), "
          f"one file changed {co:.2f} s (ours {oo:.2f} s, {oo / co:.3f}x)")
PY
