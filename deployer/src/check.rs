//! `deployer check`: on every selected host, in parallel — connect and verify the host key,
//! authenticate, then one remote script reports the deploy directory, whether it is writable, and
//! the lock. Changes nothing.

use crate::config::Target;
use crate::ssh::{Remote, SshSettings, quote};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lock {
    Free,
    /// Held; with what the holder wrote (owner, pid, time).
    Held(String),
}

/// What `check` found on one host; `problem` is set when the host is not ready to deploy.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub name: String,
    pub deploy_to: String,
    pub reachable: bool,
    pub dir_exists: bool,
    pub writable: bool,
    pub lock: Option<Lock>,
    pub problem: Option<String>,
}

/// The remote half: key=value lines, one exec.
fn script(deploy_to: &str) -> String {
    let d = quote(deploy_to);
    format!(
        "d={d}
if [ -d \"$d\" ]; then echo dir=yes; t=\"$d\"; else echo dir=no; t=$(dirname \"$d\"); while [ ! -d \"$t\" ]; do t=$(dirname \"$t\"); done; fi
if [ -w \"$t\" ]; then echo writable=yes; else echo writable=no; fi
if [ -d \"$d/.deploy/lock\" ]; then echo lock=held; cat \"$d/.deploy/lock/owner\" 2>/dev/null | head -c 500 | tr '\\n' ' '; echo; else echo lock=free; fi
"
    )
}

impl HostReport {
    fn new(t: &Target, problem: Option<String>) -> Self {
        Self {
            name: t.name.clone(),
            deploy_to: t.deploy_to.clone(),
            reachable: false,
            dir_exists: false,
            writable: false,
            lock: None,
            problem,
        }
    }
}

pub fn check_host(t: &Target, ssh: &SshSettings) -> HostReport {
    let mut r = HostReport::new(t, None);
    let remote = match Remote::connect(&t.name, &t.host, t.port, ssh) {
        Ok(remote) => remote,
        Err(e) => {
            r.problem = Some(e.to_string());
            return r;
        }
    };
    r.reachable = true;
    let out = match remote.exec(&script(&t.deploy_to)) {
        Ok(o) if o.status == 0 => o,
        Ok(o) => {
            r.problem = Some(format!(
                "check script exited {}: {}",
                o.status,
                o.stderr.trim()
            ));
            return r;
        }
        Err(e) => {
            r.problem = Some(e.to_string());
            return r;
        }
    };
    let mut lines = out.stdout.lines();
    while let Some(line) = lines.next() {
        match line {
            "dir=yes" => r.dir_exists = true,
            "writable=yes" => r.writable = true,
            "lock=free" => r.lock = Some(Lock::Free),
            "lock=held" => r.lock = Some(Lock::Held(lines.next().unwrap_or("").trim().to_owned())),
            _ => {}
        }
    }
    r.problem = if !r.writable {
        Some(format!("{} is not writable by this user", t.deploy_to))
    } else if let Some(Lock::Held(by)) = &r.lock {
        Some(format!(
            "locked by another deploy: {by} (deployer unlock to clear a stale lock)"
        ))
    } else {
        None
    };
    r
}

/// Checks all hosts, at most `parallel` at a time; reports in the targets' order.
pub fn check_all(targets: &[Target], ssh: &SshSettings, parallel: usize) -> Vec<HostReport> {
    let mut targets = targets.to_vec();
    crate::fleet::each(&mut targets, parallel, |t| check_host(t, ssh))
}

/// A table, one host a row.
pub fn render(reports: &[HostReport]) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut rows = vec![[
        "HOST".to_owned(),
        "SSH".into(),
        "DEPLOY_TO".into(),
        "EXISTS".into(),
        "WRITABLE".into(),
        "LOCK".into(),
        "STATUS".into(),
    ]];
    for r in reports {
        rows.push([
            r.name.clone(),
            yes(r.reachable).into(),
            r.deploy_to.clone(),
            if r.reachable {
                yes(r.dir_exists).into()
            } else {
                "-".into()
            },
            if r.reachable {
                yes(r.writable).into()
            } else {
                "-".into()
            },
            match &r.lock {
                None => "-".into(),
                Some(Lock::Free) => "free".into(),
                Some(Lock::Held(_)) => "held".into(),
            },
            r.problem.clone().unwrap_or_else(|| "ok".into()),
        ]);
    }
    crate::report::table(&rows.into_iter().map(Vec::from).collect::<Vec<_>>())
}
