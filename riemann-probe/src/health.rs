//! The host's health as riemann-health reports it: `cpu` (busy fraction since the last sample),
//! `memory` (used fraction: 1 − MemAvailable/MemTotal), `load` (1-minute load average per core)
//! and `disk MOUNT` (used fraction of each real filesystem, as df counts it), each with a state
//! from its warning and critical thresholds. Read from /proc and statvfs(2), Linux only.

use crate::event::EventBuilder;
use std::collections::HashSet;

/// Thresholds (a value at or above one gives its state), riemann-health's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    pub warning: f64,
    pub critical: f64,
}

impl Thresholds {
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

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthLimits {
    pub cpu: Thresholds,
    pub memory: Thresholds,
    pub load: Thresholds,
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

/// The mount points of real filesystems from /proc/mounts, each once.
fn mounts(text: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, point, fstype) = (f.next()?, f.next()?, f.next()?);
            // Octal escapes (\040 for a space) as the kernel writes them.
            let point = point.replace("\\040", " ").replace("\\011", "\t");
            (!PSEUDO.contains(&fstype) && seen.insert(point.clone())).then_some(point)
        })
        .collect()
}

fn disk_used(point: &str) -> Option<f64> {
    let s = nix::sys::statvfs::statvfs(point).ok()?;
    let block = s.fragment_size() as f64;
    let used = (s.blocks() as f64 - s.blocks_free() as f64) * block;
    let available = s.blocks_available() as f64 * block;
    (used + available > 0.0).then(|| used / (used + available))
}

/// Samples the host; keeps the last CPU sample so each `cpu` event covers one interval.
pub struct HostHealth {
    limits: HealthLimits,
    last_cpu: Option<(u64, u64)>,
    cores: usize,
}

impl HostHealth {
    /// Takes the first CPU sample now: the first `cpu` event covers the first interval.
    pub fn new(limits: HealthLimits) -> Self {
        Self {
            limits,
            last_cpu: std::fs::read_to_string("/proc/stat")
                .ok()
                .and_then(|s| cpu_times(&s)),
            cores: std::thread::available_parallelism().map_or(1, usize::from),
        }
    }

    /// This interval's events (without host and ttl: the caller's `base` adds them).
    pub fn sample(&mut self, base: &dyn Fn(String) -> EventBuilder) -> Vec<crate::Event> {
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
        if let Some(now) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| cpu_times(&s))
        {
            if let Some((busy0, total0)) = self.last_cpu
                && now.1 > total0
            {
                let busy = (now.0.saturating_sub(busy0)) as f64 / (now.1 - total0) as f64;
                push(
                    "cpu".into(),
                    busy,
                    &self.limits.cpu,
                    format!("{:.1}% busy", busy * 100.0),
                );
            }
            self.last_cpu = Some(now);
        }
        if let Some(used) = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| memory_used(&m))
        {
            push(
                "memory".into(),
                used,
                &self.limits.memory,
                format!("{:.1}% used", used * 100.0),
            );
        }
        if let Some(one) = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        {
            let per_core = one / self.cores as f64;
            push(
                "load".into(),
                per_core,
                &self.limits.load,
                format!("1-minute load average {one} over {} cores", self.cores),
            );
        }
        let points = std::fs::read_to_string("/proc/mounts")
            .map(|m| mounts(&m))
            .unwrap_or_default();
        for point in points {
            if let Some(used) = disk_used(&point) {
                push(
                    format!("disk {point}"),
                    used,
                    &self.limits.disk,
                    format!("{:.1}% used", used * 100.0),
                );
            }
        }
        out
    }
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
