//! The host's health as riemann-health reports it: `cpu` (busy fraction since the last sample),
//! `memory` (used fraction: 1 − MemAvailable/MemTotal), `load` (1-minute load average per core)
//! and `disk MOUNT` (used fraction of each local filesystem, as df counts it), each with a state
//! from its warning and critical thresholds. Read from /proc and statvfs(2), Linux only.
//!
//! Network and FUSE filesystems are left out: statvfs on a hung NFS mount never returns. The
//! disks are sampled on a thread of their own all the same, and a sample that does not come back
//! within [`DISK_DEADLINE`] is reported as a critical `disk` event instead of stopping the watch.

use crate::event::EventBuilder;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Longest wait for one round of statvfs calls.
pub(crate) const DISK_DEADLINE: Duration = Duration::from_secs(5);

/// Thresholds (a value at or above one gives its state), riemann-health's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// At or above this, `warning`.
    pub warning: f64,
    /// At or above this, `critical`.
    pub critical: f64,
}

impl Thresholds {
    /// The state for `value`: `ok`, `warning` or `critical`.
    pub fn state(&self, value: f64) -> &'static str {
        if value >= self.critical {
            "critical"
        } else if value >= self.warning {
            "warning"
        } else {
            "ok"
        }
    }
}

/// The thresholds of each health event; the default is riemann-health's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthLimits {
    /// Busy fraction of the CPUs (0–1) [default: 0.9, 0.95].
    pub cpu: Thresholds,
    /// Used fraction of memory (0–1) [default: 0.85, 0.95].
    pub memory: Thresholds,
    /// 1-minute load average per core [default: 3, 8].
    pub load: Thresholds,
    /// Used fraction of each local filesystem (0–1) [default: 0.9, 0.95].
    pub disk: Thresholds,
}

impl Default for HealthLimits {
    fn default() -> Self {
        let t = |warning, critical| Thresholds { warning, critical };
        Self {
            cpu: t(0.9, 0.95),
            memory: t(0.85, 0.95),
            load: t(3.0, 8.0),
            disk: t(0.9, 0.95),
        }
    }
}

/// Filesystems that hold no data of their own (what `df` leaves out with `-x`).
const PSEUDO: &[&str] = &[
    "proc",
    "sysfs",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "cgroup",
    "cgroup2",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "autofs",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "binfmt_misc",
    "nsfs",
    "rpc_pipefs",
    "squashfs",
    "ramfs",
    "efivarfs",
    "selinuxfs",
];

/// Filesystems whose statvfs waits on a network or another process.
const REMOTE: &[&str] = &[
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "glusterfs",
    "9p",
    "afs",
    "lustre",
    "davfs",
    "sshfs",
];

/// Whether a mount is a local filesystem worth a `disk` event. An overlay counts only as the
/// root of a container: a Docker host has one per container, which come and go.
fn is_local_disk(fstype: &str, point: &str) -> bool {
    !PSEUDO.contains(&fstype)
        && !REMOTE.contains(&fstype)
        && !fstype.starts_with("fuse")
        && (fstype != "overlay" || point == "/")
}

/// Busy and total jiffies from /proc/stat's `cpu` line.
fn cpu_times(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: idle and iowait are not busy.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// Used fraction of memory from /proc/meminfo.
fn memory_used(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
    };
    let total = field("MemTotal:")?;
    let available = field("MemAvailable:")?;
    (total > 0.0).then(|| 1.0 - available / total)
}

/// The mount points of real filesystems from /proc/mounts, each filesystem once: a device
/// mounted again elsewhere (a bind mount such as iproute2's /run/netns, a container's volume)
/// is the same disk, reported at its shortest mount point.
fn mounts(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut points: Vec<(String, String)> = Vec::new();
    for l in text.lines() {
        let mut f = l.split_whitespace();
        let (Some(source), Some(point), Some(fstype)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        // Octal escapes (\040 for a space) as the kernel writes them.
        let point = point.replace("\\040", " ").replace("\\011", "\t");
        if !is_local_disk(fstype, &point) || !seen.insert(point.clone()) {
            continue;
        }
        match points
            .iter_mut()
            .find(|(s, _)| s == source && source.starts_with('/'))
        {
            Some((_, kept)) if point.len() < kept.len() => *kept = point,
            Some(_) => {}
            None => points.push((source.to_owned(), point)),
        }
    }
    points.into_iter().map(|(_, point)| point).collect()
}

fn disk_used(point: &str) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(point).ok()?;
    let block = s.fragment_size() as f64;
    let used = (s.blocks() as f64 - s.blocks_free() as f64) * block;
    let available = s.blocks_available() as f64 * block;
    (used + available > 0.0).then(|| used / (used + available))
}

/// The machine's cores as /proc/stat counts them (`cpuN` lines), not the cgroup's quota: the
/// load average is the whole machine's.
fn cores(stat: &str) -> usize {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count()
        .max(1)
}

/// One round of statvfs calls: (mount point, used fraction) for each that answered.
fn disks() -> Vec<(String, f64)> {
    std::fs::read_to_string("/proc/mounts")
        .map(|m| mounts(&m))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| disk_used(&p).map(|used| (p, used)))
        .collect()
}

/// Samples the host; keeps the last CPU sample so each `cpu` event covers one interval.
pub(crate) struct HostHealth {
    limits: HealthLimits,
    /// Busy and total jiffies, and when they were read.
    last_cpu: Option<(u64, u64, Instant)>,
    /// A `cpu` event needs at least this much time since the last sample (half an interval):
    /// over a few jiffies the busy fraction is 0, 0.5 or 1, noise that would page.
    min_cpu_span: Duration,
    cores: usize,
    /// A disk round still running (a hung mount): the next rounds wait for it.
    disks_busy: Arc<AtomicBool>,
    disks_since: Option<Instant>,
}

impl HostHealth {
    /// Takes the first CPU sample now; the first `cpu` event comes once `interval / 2` passed.
    pub(crate) fn new(limits: HealthLimits, interval: Duration) -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self {
            limits,
            last_cpu: cpu_times(&stat).map(|(b, t)| (b, t, Instant::now())),
            min_cpu_span: interval / 2,
            cores: cores(&stat),
            disks_busy: Arc::new(AtomicBool::new(false)),
            disks_since: None,
        }
    }

    /// The disks, from a thread of their own, within [`DISK_DEADLINE`]; `Err` with how long a
    /// round has been stuck.
    fn sample_disks(&mut self) -> Result<Vec<(String, f64)>, Duration> {
        if self.disks_busy.load(Ordering::Acquire) {
            let since = self.disks_since.map_or(Duration::ZERO, |t| t.elapsed());
            return Err(since);
        }
        self.disks_busy.store(true, Ordering::Release);
        self.disks_since = Some(Instant::now());
        let (tx, rx) = std::sync::mpsc::channel();
        let busy = self.disks_busy.clone();
        std::thread::spawn(move || {
            let _ = tx.send(disks());
            busy.store(false, Ordering::Release);
        });
        rx.recv_timeout(DISK_DEADLINE).map_err(|_| DISK_DEADLINE)
    }

    /// This interval's events (without host and ttl: the caller's `base` adds them).
    pub(crate) fn sample(&mut self, base: &dyn Fn(String) -> EventBuilder) -> Vec<crate::Event> {
        let mut out = Vec::new();
        let mut push = |service: String, value: f64, t: &Thresholds, description: String| {
            out.push(
                base(service)
                    .metric(value)
                    .state(t.state(value))
                    .description(description)
                    .build(),
            );
        };
        if let Some(fraction) = self.cpu_busy() {
            let shown = format!("{:.1}% busy", fraction * 100.0);
            push("cpu".into(), fraction, &self.limits.cpu, shown);
        }
        if let Some(used) = read_proc("/proc/meminfo", memory_used) {
            let shown = format!("{:.1}% used", used * 100.0);
            push("memory".into(), used, &self.limits.memory, shown);
        }
        if let Some(one) = read_proc("/proc/loadavg", |l| {
            l.split_whitespace().next()?.parse::<f64>().ok()
        }) {
            let shown = format!("1-minute load average {one} over {} cores", self.cores);
            push(
                "load".into(),
                one / self.cores as f64,
                &self.limits.load,
                shown,
            );
        }
        match self.sample_disks() {
            Ok(disks) => {
                for (point, used) in disks {
                    let shown = format!("{:.1}% used", used * 100.0);
                    push(format!("disk {point}"), used, &self.limits.disk, shown);
                }
            }
            Err(stuck) => out.push(
                base("disk".into())
                    .state("critical")
                    .description(format!(
                        "statvfs has not returned for {} s: a hung mount?",
                        stuck.as_secs()
                    ))
                    .build(),
            ),
        }
        out
    }

    /// The share of CPU time busy since the last sample, once at least `min_cpu_span` ago
    /// (too soon: the older sample stays, so the next figure spans enough time).
    fn cpu_busy(&mut self) -> Option<f64> {
        let (busy, total) = read_proc("/proc/stat", cpu_times)?;
        match self.last_cpu {
            Some((_, _, at)) if at.elapsed() < self.min_cpu_span => None,
            Some((busy0, total0, _)) if total > total0 => {
                self.last_cpu = Some((busy, total, Instant::now()));
                Some(busy.saturating_sub(busy0) as f64 / (total - total0) as f64)
            }
            _ => {
                self.last_cpu = Some((busy, total, Instant::now()));
                None
            }
        }
    }
}

/// A file of /proc read and parsed by `parse`; `None` if either fails.
fn read_proc<T>(path: &str, parse: impl Fn(&str) -> Option<T>) -> Option<T> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_proc_as_the_kernel_writes_it() {
        assert_eq!(
            cpu_times("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n"),
            Some((150, 1000))
        );
        let meminfo = "MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    250 kB\n";
        assert_eq!(memory_used(meminfo), Some(0.75));
        assert_eq!(memory_used("MemTotal: 0 kB\nMemAvailable: 0 kB\n"), None);
        let m = mounts(
            "/dev/sda1 / ext4 rw 0 0\nproc /proc proc rw 0 0\ntmpfs /run tmpfs rw 0 0\n\
             /dev/sdb1 /srv/my\\040data xfs rw 0 0\n/dev/sda1 / ext4 rw 0 0\n",
        );
        assert_eq!(m, ["/", "/srv/my data"]);
        // A bind mount of a disk already reported (iproute2's /run/netns) is that disk.
        let m = mounts(
            "/dev/vda /run/netns ext4 rw 0 0\n/dev/vda / ext4 rw 0 0\n/dev/vdb /data xfs rw 0 0\n",
        );
        assert_eq!(m, ["/", "/data"]);
        let m = mounts(
            "srv:/export /mnt/nfs nfs4 rw 0 0\nsshfs#x /mnt/s fuse.sshfs rw 0 0\n\
             overlay /var/lib/docker/overlay2/x/merged overlay rw 0 0\noverlay / overlay rw 0 0\n",
        );
        assert_eq!(m, ["/"], "no network, FUSE or per-container overlay mounts");
        assert_eq!(cores("cpu  1 2 3\ncpu0 1\ncpu1 2\nintr 5\n"), 2);
    }

    #[test]
    fn states_from_thresholds_as_riemann_health() {
        let l = HealthLimits::default();
        assert_eq!(l.cpu.state(0.5), "ok");
        assert_eq!(l.cpu.state(0.9), "warning");
        assert_eq!(l.cpu.state(0.97), "critical");
        assert_eq!(l.load.state(4.0), "warning");
    }
}
