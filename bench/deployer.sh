#!/usr/bin/env bash
# deployer beside the Capistrano-style shell baseline (ssh + rsync -a --delete
# --link-dest=<previous> + ln -s + mv -T) and Capistrano 3 itself, in one run, against real sshd
# servers on 127.0.0.101-108: a tree of FILES files (default 20,000) of 10 KB (200 MB), first
# deploy, one file changed and rollback, to one host and to 8 at once. Prints medians of RUNS
# runs (CAP_RUNS for Capistrano, which is slow), the ratios ours/rsync and ours/Capistrano, and
# the deployer's peak RSS. CAP=0 leaves Capistrano out; DEPLOYER=path measures another build;
# RTT_MS=50 puts a link with 50 ms of round-trip delay in front of every host, RATE_MBIT=10 one
# of 10 Mbit/s each way (each host its own), alone or with RTT_MS.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-3}
export FILES=${FILES:-20000} CAP=${CAP:-1} CAP_RUNS=${CAP_RUNS:-1}
for tool in /usr/sbin/sshd ssh ssh-keygen ssh-keyscan rsync python3 git unshare /usr/bin/time; do
  command -v "$tool" >/dev/null || { echo "$tool missing: make peers" >&2; exit 1; }
done
[ "$CAP" = 0 ] || command -v cap >/dev/null || { echo "cap missing: make peers (or CAP=0)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root (sshd on 127.0.0.101-108 logs in as root; mounts)" >&2; exit 1; }
[ -f /etc/skel/.bashrc ] || { echo "/etc/skel/.bashrc missing (the hosts' login shell reads it)" >&2; exit 1; }
# DEPLOYER: another build to measure (e.g. the previous commit's, for a before/after).
if [ -z "${DEPLOYER:-}" ]; then
  cargo build -q --release --manifest-path ../Cargo.toml -p deployer
  DEPLOYER=$PWD/../target/release/deployer
fi
export DEPLOYER

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null
  rm -rf "$tmp" ${SRV_DIR:+"$SRV_DIR"}
}
trap cleanup EXIT
export SRV_DIR=${SRV_DIR:+$SRV_DIR/deployer-bench.$$}
mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$tmp/client"
cp "$tmp/client.pub" "$tmp/authorized_keys"; chmod 644 "$tmp/authorized_keys"
: > "$tmp/known_hosts"
hosts=()
for n in $(seq 101 108); do
  ip=127.0.0.$n; d=$tmp/sshd$n; mkdir -p "$d"
  ssh-keygen -q -t ed25519 -N '' -f "$d/host"
  port=$(python3 -c "import socket; s=socket.socket(); s.bind(('$ip',0)); print(s.getsockname()[1])")
  cat > "$d/config" <<EOF
Port $port
ListenAddress $ip
HostKey $d/host
PidFile $d/pid
AuthorizedKeysFile $tmp/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100
LogLevel ERROR
EOF
  # The hosts' login shell reads root's ~/.bashrc; on this machine it starts pyenv (~0.3 s a
  # command, each tool's every ssh command), a cost of this machine, not of a host: each sshd
  # runs in a mount namespace where root's is a fresh account's (Debian's /etc/skel/.bashrc).
  unshare --mount --propagation private sh -c \
    'mount --bind /etc/skel/.bashrc /root/.bashrc && exec /usr/sbin/sshd -D -e -f "$1"' \
    sh "$d/config" 2>>"$tmp/sshd.log" &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/$ip/$port) 2>/dev/null && break; sleep 0.05; done
  ssh-keyscan -p "$port" -t ed25519 "$ip" >> "$tmp/known_hosts" 2>/dev/null
  hosts+=("$ip:$port")
done

python3 - "$tmp" "$RUNS" "${hosts[@]}" <<'PY'
import os, random, shutil, statistics, subprocess, sys, threading, time
tmp, runs, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
files = int(os.environ["FILES"])
cap_on, cap_runs = os.environ["CAP"] != "0", int(os.environ["CAP_RUNS"])
src = f"{tmp}/dist"
rng = random.Random(42)
# FILES files of 10 KB, incompressible, 200 to a directory.
for i in range(files):
    d = f"{src}/dir{i // 200:03}"
    if i % 200 == 0:
        os.makedirs(d)
    with open(f"{d}/file{i % 200:03}.bin", "wb") as fh:
        fh.write(rng.randbytes(10_000))
ssh_opts = ["-i", f"{tmp}/client", "-o", f"UserKnownHostsFile={tmp}/known_hosts",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]

# RTT_MS=50 puts a link with that round-trip delay in front of every host, RATE_MBIT=10 one of
# that bandwidth (slow_link.py).
rtt = float(os.environ.get("RTT_MS", "0")) / 1000
bps = float(os.environ.get("RATE_MBIT", "0")) * 1e6 or None
if rtt or bps:
    sys.path.insert(0, os.getcwd())
    from slow_link import known_hosts_for, slow_link
    known = open(f"{tmp}/known_hosts").read().splitlines()
    slow_hosts, slow_known = [], []
    for h in hosts:
        ip, port = h.split(":")
        p = slow_link(ip, port, rtt, bps)
        slow_known += known_hosts_for(known, ip, port, p)
        slow_hosts.append(f"{ip}:{p}")
    with open(f"{tmp}/known_hosts", "a") as fh:
        fh.write("\n".join(slow_known) + "\n")
    hosts = slow_hosts

# SRV_DIR=/dev/shm/x puts the "remote" deploy_to dirs on tmpfs, to take this disk out.
srv = os.environ.get("SRV_DIR") or tmp
def target(i, kind):
    return f"{srv}/srv{i}/{kind}"

with open(f"{tmp}/deploy.toml", "w") as c:
    c.write(f'application = "bench"\ndeploy_to = "/unused"\nsource = "dist"\nkeep_releases = 3\n'
            f'[ssh]\nuser = "root"\nidentity = "{tmp}/client"\nknown_hosts = "{tmp}/known_hosts"\n')
    for i, h in enumerate(hosts):
        c.write(f'[[hosts]]\naddress = "{h}"\ndeploy_to = "{target(i, "ours")}"\n')

def git(*args, cwd=src):
    subprocess.run(["git", "-c", "user.name=b", "-c", "user.email=b@example.com", *args],
                   cwd=cwd, check=True, stdout=subprocess.DEVNULL)

# Capistrano deploys from a git repository of the same tree. Its deploy_to is one setting for
# all servers, and the 8 "hosts" share this machine's disk: one stage per host, each with its own
# deploy_to, run side by side (8 Ruby processes where Capistrano would use one).
if cap_on:
    git("init", "-q", "-b", "main")
    git("add", "-A"); git("commit", "-q", "-m", "tree")
    git("clone", "-q", "--bare", src, f"{tmp}/repo.git", cwd=tmp)
    git("remote", "add", "origin", f"{tmp}/repo.git")
    proj = f"{tmp}/cap"
    os.makedirs(f"{proj}/config/deploy")
    open(f"{proj}/Capfile", "w").write(
        'require "capistrano/setup"\nrequire "capistrano/deploy"\nrequire "capistrano/scm/git"\n'
        'install_plugin Capistrano::SCM::Git\n')
    open(f"{proj}/config/deploy.rb", "w").write(
        f'set :application, "bench"\nset :repo_url, "file://{tmp}/repo.git"\nset :branch, "main"\n'
        f'set :keep_releases, 3\nset :format_options, log_file: "{tmp}/cap.log"\n'
        f'set :ssh_options, {{ keys: ["{tmp}/client"], auth_methods: ["publickey"], '
        f'verify_host_key: :always, user_known_hosts_file: "{tmp}/known_hosts" }}\n')
    for i, h in enumerate(hosts):
        ip, port = h.split(":")
        open(f"{proj}/config/deploy/h{i}.rb", "w").write(
            f'set :deploy_to, "{target(i, "cap")}"\nserver "{ip}", port: {port}, user: "root", roles: %w{{app}}\n')

# DEPLOYER_ARGS="--parallel 4" tries other settings; CASES="first, 8" runs only matching cases.
extra = os.environ.get("DEPLOYER_ARGS", "").split()
peak_rss = {}
cpu_per_host = {}
def ours_run(n, *args):
    sel = ",".join(hosts[:n])
    out = subprocess.run(["/usr/bin/time", "-f", "%M %U %S", os.environ["DEPLOYER"], "-c", f"{tmp}/deploy.toml",
                          "--quiet", *extra, *args, "--hosts", sel],
                         check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kb, user, system = out.stderr.strip().splitlines()[-1].split()
    peak_rss[args[0]] = max(peak_rss.get(args[0], 0), int(kb))
    # The deployer's own CPU (user + system), per host: what it costs beyond the hosts' work.
    cpu_per_host.setdefault((args[0], n), []).append((float(user) + float(system)) / n)

def parallel(n, one):
    # n hosts at once, as a shell script would with `&` and `wait`.
    errs = []
    def run(i):
        try:
            one(i)
        except Exception as e:
            errs.append(e)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    [t.start() for t in ts]; [t.join() for t in ts]
    if errs:
        raise errs[0]

def rsync_one(i):
    ip, port = hosts[i].split(":")
    ssh = ["ssh", *ssh_opts, "-p", port, f"root@{ip}"]
    d = target(i, "base")
    ts = time.strftime("%Y%m%d%H%M%S", time.gmtime()) + f"{time.time_ns() % 10**9:09}"
    prev = subprocess.run([*ssh, f"mkdir -p {d}/releases && readlink {d}/current || true"],
                          check=True, capture_output=True, text=True).stdout.strip()
    link = [f"--link-dest={prev}"] if prev else []
    subprocess.run(["rsync", "-a", "--delete", *link, "-e", " ".join(["ssh", *ssh_opts, "-p", port]),
                    f"{src}/", f"root@{ip}:{d}/releases/{ts}/"], check=True)
    subprocess.run([*ssh, f"cd {d} && ln -s {d}/releases/{ts} current.tmp && mv -T current.tmp current"],
                   check=True)

def rsync_rollback_one(i):
    ip, port = hosts[i].split(":")
    d = target(i, "base")
    subprocess.run(["ssh", *ssh_opts, "-p", port, f"root@{ip}",
                    f"cd {d} && p=$(ls releases | sort | tail -n 2 | head -n 1) && "
                    f"ln -s {d}/releases/$p current.tmp && mv -T current.tmp current"], check=True)

def cap_one(i, task):
    subprocess.run(["cap", f"h{i}", task], cwd=f"{tmp}/cap", check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

def ours(n): ours_run(n, "deploy")
def ours_rollback(n): ours_run(n, "rollback")
def rsync(n): parallel(n, rsync_one)
def rsync_rollback(n): parallel(n, rsync_rollback_one)
def cap(n): parallel(n, lambda i: cap_one(i, "deploy"))
def cap_rollback(n): parallel(n, lambda i: cap_one(i, "deploy:rollback"))

def fresh(n, kind):
    # One tool's trees only, right before its own run, so each pays for deleting its own: on
    # a disk that discards freed blocks (this VM's ext4), the next writer after deleting
    # 200 MB a host is slowed, and deleting every tool's trees at once charged it all to
    # whichever tool went first.
    for i in range(n):
        shutil.rmtree(target(i, kind), ignore_errors=True)

counter = [0]
def change_one_file():
    counter[0] += 1
    middle = files // 2
    with open(f"{src}/dir{middle // 200:03}/file{middle % 200:03}.bin", "ab") as fh:
        fh.write(str(counter[0]).encode())
    if cap_on:
        git("commit", "-q", "-am", f"change {counter[0]}"); git("push", "-q", "origin", "main")

def timed(fn, *a):
    # Let the disk finish the previous run's writes and deletions before the clock starts.
    os.sync()
    t = time.perf_counter(); fn(*a); return time.perf_counter() - t

results, shown = {}, {}
def measure(name, n, kind):
    if os.environ.get("CASES", "") not in name:
        return
    peers = {"first": (ours, rsync, cap), "one file changed": (ours, rsync, cap),
             "rollback": (ours_rollback, rsync_rollback, cap_rollback)}[kind]
    times = {"ours": [], "rsync": [], "cap": []}
    for r in range(max(runs, cap_runs)):
        if kind == "one file changed":
            change_one_file()
        else:
            # Something to roll back from: a deploy of a changed file with each tool.
            change_one_file(); ours(n); rsync(n)
            if cap_on and r < cap_runs:
                cap(n)
        # Alternate who goes first, so none always runs on a warmer cache.
        order = [("ours", peers[0]), ("rsync", peers[1])]
        if cap_on and r < cap_runs:
            order.append(("cap", peers[2]))
        if r % 2:
            order.reverse()
        for who, fn in order:
            if who != "cap" and r >= runs:
                continue
            if kind == "first":
                fresh(n, {"ours": "ours", "rsync": "base", "cap": "cap"}[who])
            times[who].append(timed(fn, n))
    results[name] = {who: statistics.median(t) for who, t in times.items() if t}
    shown[name] = times

for kind in ("first", "one file changed", "rollback"):
    for n in (1, 8):
        measure(f"{kind}, {n} host{'s' if n > 1 else ''}", n, kind)

print(f"tree: {files} files, {files * 10 // 1000} MB; medians of {runs} runs ({cap_runs} for Capistrano); "
      "rsync = ssh + rsync -a --delete --link-dest + ln -s + mv -T")
if rtt or bps:
    print(f"every host behind a link of {rtt * 1000:.0f} ms round trip"
          + (f", {bps / 1e6:g} Mbit/s each way" if bps else ""))
print(f"{'case':<28} {'deployer_s':>10} {'rsync_s':>8} {'cap_s':>8} {'ours/rsync':>10} {'ours/cap':>9}")
for name, t in results.items():
    o, b, c = t["ours"], t.get("rsync"), t.get("cap")
    cs = f"{c:>8.2f}" if c else f"{'-':>8}"
    cr = f"{o / c:>9.3f}" if c else f"{'-':>9}"
    print(f"{name:<28} {o:>10.3f} {b:>8.3f} {cs} {o / b:>10.2f} {cr}")
# Every run, in the order of the rounds (who went first alternates): the spread a median hides.
for name, t in shown.items():
    runs_shown = "  ".join(f"{who} " + " ".join(f"{x:.2f}" for x in xs) for who, xs in t.items() if xs)
    print(f"  runs, {name}: {runs_shown}")
for cmd, kb in peak_rss.items():
    print(f"deployer peak RSS ({cmd}): {kb / 1024:.1f} MB")
for (cmd, n), per_host in sorted(cpu_per_host.items()):
    print(f"deployer CPU per host ({cmd}, {n} host{'s' if n > 1 else ''}): "
          f"{statistics.median(per_host) * 1000:.1f} ms (median of {len(per_host)} runs)")
PY
