#!/usr/bin/env bash
# deployer vs the Capistrano-style shell baseline (ssh + rsync -a --delete --link-dest=<previous>
# + ln -s + mv -T), in one run, against real sshd servers on 127.0.0.101-108: a tree of 5000
# files / 50 MB, first deploy and one-file-changed deploy to one host, then to 8 hosts at once.
# Prints medians of RUNS runs and the ratios ours/baseline and 8 hosts/1 host.
set -euo pipefail
cd "$(dirname "$0")"
RUNS=${RUNS:-5}
for tool in /usr/sbin/sshd ssh ssh-keygen ssh-keyscan rsync python3; do
  command -v "$tool" >/dev/null || { echo "$tool missing: make peers" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "run as root (sshd on 127.0.0.101-108 logs in as root)" >&2; exit 1; }
cargo build -q --release --manifest-path ../Cargo.toml -p deployer
export DEPLOYER=$PWD/../target/release/deployer

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
  /usr/sbin/sshd -D -e -f "$d/config" 2>>"$tmp/sshd.log" &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/$ip/$port) 2>/dev/null && break; sleep 0.05; done
  ssh-keyscan -p "$port" -t ed25519 "$ip" >> "$tmp/known_hosts" 2>/dev/null
  hosts+=("$ip:$port")
done

python3 - "$tmp" "$RUNS" "${hosts[@]}" <<'PY'
import os, random, shutil, statistics, subprocess, sys, time
tmp, runs, hosts = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
src = f"{tmp}/dist"
rng = random.Random(42)
# 5000 files, 50 MB: 100 directories of 50 files of 10 KB, incompressible.
for d in range(100):
    os.makedirs(f"{src}/dir{d:03}")
    for f in range(50):
        with open(f"{src}/dir{d:03}/file{f:02}.bin", "wb") as fh:
            fh.write(rng.randbytes(10_000))
ssh_opts = ["-i", f"{tmp}/client", "-o", f"UserKnownHostsFile={tmp}/known_hosts",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"]

# SRV_DIR=/dev/shm/x puts the "remote" deploy_to dirs on tmpfs, to take this disk out.
srv = os.environ.get("SRV_DIR") or tmp
def target(i, kind):
    return f"{srv}/srv{i}/{kind}"

with open(f"{tmp}/deploy.toml", "w") as c:
    c.write(f'application = "bench"\ndeploy_to = "/unused"\nsource = "dist"\nkeep_releases = 3\n'
            f'[ssh]\nuser = "root"\nidentity = "{tmp}/client"\nknown_hosts = "{tmp}/known_hosts"\n')
    for i, h in enumerate(hosts):
        c.write(f'[[hosts]]\naddress = "{h}"\ndeploy_to = "{target(i, "ours")}"\n')

# DEPLOYER_ARGS="--parallel 4" tries other settings; CASES="first, 8" runs only matching cases.
extra = os.environ.get("DEPLOYER_ARGS", "").split()
def ours(n):
    sel = ",".join(hosts[:n])
    subprocess.run([os.environ["DEPLOYER"], "-c", f"{tmp}/deploy.toml", "--quiet", *extra, "deploy",
                    "--hosts", sel], check=True, stdout=subprocess.DEVNULL)

def baseline_one(i):
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

def baseline(n):
    # n hosts at once, as a shell script would with `&` and `wait`.
    import threading
    errs = []
    def one(i):
        try:
            baseline_one(i)
        except Exception as e:
            errs.append(e)
    ts = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    [t.start() for t in ts]; [t.join() for t in ts]
    if errs:
        raise errs[0]

def fresh(n):
    for i in range(n):
        for kind in ("ours", "base"):
            shutil.rmtree(target(i, kind), ignore_errors=True)

counter = [0]
def change_one_file():
    counter[0] += 1
    with open(f"{src}/dir042/file07.bin", "ab") as fh:
        fh.write(str(counter[0]).encode())

def busy():
    # CPU seconds used machine-wide (user, system; every process: ours, sshd, tar, rsync).
    f = open("/proc/stat").readline().split()[1:]
    hz = os.sysconf("SC_CLK_TCK")
    return (int(f[0]) + int(f[1]) + int(f[2])) / hz, int(f[2]) / hz

cpu = {}
def timed(fn, *a):
    u0, s0 = busy(); t = time.perf_counter(); fn(*a); dt = time.perf_counter() - t; u1, s1 = busy()
    cpu.setdefault(fn.__name__, []).append((u1 - u0, s1 - s0))
    return dt

results = {}
cpus = {}
def measure(name, n, first):
    if os.environ.get("CASES", "") not in name:
        return
    o, b = [], []
    for r in range(runs):
        if first:
            fresh(n)
        else:
            change_one_file()
        # Let the disk finish the previous run's writes and deletions before the clock starts.
        os.sync()
        # Alternate who goes first, so neither always runs on a warmer cache.
        if r % 2 == 0:
            o.append(timed(ours, n)); os.sync(); b.append(timed(baseline, n))
        else:
            b.append(timed(baseline, n)); os.sync(); o.append(timed(ours, n))
    results[name] = (statistics.median(o), statistics.median(b))
    for who in ("ours", "baseline"):
        runs_cpu = cpu.pop(who, [])
        cpus[name, who] = (statistics.median(c for c, _ in runs_cpu), statistics.median(s for _, s in runs_cpu))

measure("first, 1 host", 1, True)
measure("one file changed, 1 host", 1, False)
measure("first, 8 hosts", 8, True)
measure("one file changed, 8 hosts", 8, False)

print(f"tree: 5000 files, 50 MB; medians of {runs} runs; baseline = ssh + rsync --link-dest + ln -s + mv -T")
print(f"{'case':<28} {'deployer_s':>10} {'baseline_s':>10} {'ours/base':>9}")
for name, (o, b) in results.items():
    print(f"{name:<28} {o:>10.3f} {b:>10.3f} {o / b:>9.2f}")
print(f"{'case':<28} {'deployer_cpu_s (sys)':>20} {'baseline_cpu_s (sys)':>20}   machine-wide, medians")
for name in results:
    (oc, os_), (bc, bs) = cpus[name, "ours"], cpus[name, "baseline"]
    print(f"{name:<28} {oc:>12.2f} ({os_:>5.2f}) {bc:>12.2f} ({bs:>5.2f})")
for kind in ("first", "one file changed"):
    if f"{kind}, 1 host" not in results or f"{kind}, 8 hosts" not in results:
        continue
    o1, b1 = results[f"{kind}, 1 host"]; o8, b8 = results[f"{kind}, 8 hosts"]
    print(f"8 hosts / 1 host, {kind}: deployer {o8 / o1:.2f}, baseline {b8 / b1:.2f}")
PY
