//! `deployer rollback [--to RELEASE]`: every selected host back to its previous good release
//! (or to RELEASE), all or nothing: the target is checked on every host before any `current`
//! moves, and hosts that switched are put back if another cannot. Then the after_publish hooks
//! (restart) and the health gate, a `rollback` line in revisions.log, unlock.

use crate::config::{Config, Target};
use crate::deploy::Settings;
use crate::fleet::{self, Host, each};
use crate::health::Gate;
use crate::layout::{self, LogEntry};
use crate::lock;

/// Per host: where it was, where it went, and any failure.
#[derive(Debug, Clone)]
pub struct Moved {
    pub name: String,
    pub from: Option<String>,
    pub to: Option<String>,
    pub result: Result<String, String>,
}

struct Step {
    host: Host,
    to: Option<String>,
    revision: String,
    switched: bool,
    warnings: Vec<String>,
}

pub fn rollback(
    cfg: &Config,
    targets: &[Target],
    s: &Settings,
    to: Option<&str>,
    dry_run: bool,
) -> Result<Vec<Moved>, String> {
    let gate = match &cfg.health {
        Some(h) => Gate::new(h)?,
        None => None,
    };
    let user = cfg.user();
    let owner = lock::owner_line(&user);
    let p = s.parallel;
    let mut steps: Vec<Step> = fleet::connect(targets, &s.ssh, p)
        .into_iter()
        .map(|host| Step {
            host,
            to: None,
            revision: String::new(),
            switched: false,
            warnings: Vec::new(),
        })
        .collect();
    each(&mut steps, p, |st| {
        if st.host.failure.is_some() {
            return;
        }
        if dry_run {
            let script = layout::state_script(&st.host.target.deploy_to, false);
            match st.host.run(&script, None) {
                Ok(o) => st.host.state = layout::parse_state(&o.stdout),
                Err(e) => st.host.fail("state", e),
            }
        } else {
            lock::acquire(&mut st.host, &owner, false);
        }
        if st.host.failure.is_some() {
            return;
        }
        let state = &st.host.state;
        let target = match to {
            Some(t) => state.releases.iter().find(|r| r.name == t && r.complete),
            None => layout::previous_good(state),
        };
        match target {
            Some(t) if Some(t.name.as_str()) == state.current.as_deref() => {
                st.host
                    .fail("rollback", format!("{} is already current", t.name));
            }
            Some(t) => {
                st.to = Some(t.name.clone());
                st.revision = t.revision.clone();
            }
            None => {
                let why = match to {
                    Some(t) => format!("no complete release {t} on this host"),
                    None => "no older good release to roll back to".into(),
                };
                st.host.fail("rollback", why);
            }
        }
    });
    let all_ready = steps.iter().all(|st| st.host.failure.is_none());
    if all_ready && !dry_run {
        each(&mut steps, p, |st| {
            let script = layout::switch_script(&st.host.target.deploy_to, st.to.as_deref());
            match st.host.run(&script, None) {
                Ok(_) => st.switched = true,
                Err(e) => st.host.fail("switch", e),
            }
        });
        if steps.iter().any(|st| st.host.failure.is_some()) {
            // All or nothing: put back the hosts that moved.
            each(&mut steps, p, |st| {
                if st.switched {
                    let from = st.host.state.current.clone();
                    let script = layout::switch_script(&st.host.target.deploy_to, from.as_deref());
                    match st.host.run(&script, None) {
                        Ok(_) => st.switched = false,
                        Err(e) => st.warnings.push(format!("could not switch back: {e}")),
                    }
                }
            });
        } else {
            if !cfg.hooks.after_publish.is_empty() {
                each(&mut steps, p, |st| {
                    let to = st.to.clone().unwrap_or_default();
                    let script = layout::hooks_script(
                        &st.host.target.deploy_to,
                        &to,
                        None,
                        &st.revision,
                        &cfg.hooks.after_publish,
                    );
                    if let Err(e) = st.host.run(&script, Some(s.hook_timeout)) {
                        st.host.fail("after_publish", e);
                    }
                });
            }
            if let Some(gate) = &gate {
                each(&mut steps, p, |st| {
                    // The gate checks that the release rolled back to is what answers.
                    let subject = crate::health::Subject {
                        host: &st.host.target.host,
                        release: st.to.as_deref().unwrap_or_default(),
                        revision: &st.revision,
                    };
                    if st.host.failure.is_none()
                        && let Err(e) = gate.wait_healthy(&subject)
                    {
                        st.host.fail("health", e);
                    }
                });
            }
        }
    }
    // Log and unlock.
    each(&mut steps, p, |st| {
        let d = st.host.target.deploy_to.clone();
        let log = if st.switched {
            let to = st.to.clone().unwrap_or_default();
            let failure = st.host.failure.clone();
            layout::log_script(
                &d,
                &LogEntry {
                    release: &to,
                    revision: &st.revision,
                    user: &user,
                    time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    outcome: "rollback",
                    stage: failure.as_ref().map(|f| f.stage),
                    error: failure.as_ref().map(|f| f.message.as_str()),
                    from: st.host.state.current.as_deref(),
                },
            )
        } else {
            String::new()
        };
        if let Err(e) = lock::release(&mut st.host, &owner, &log) {
            st.warnings.push(e);
        }
    });
    Ok(steps
        .into_iter()
        .map(|st| {
            let mut text = match (&st.host.failure, dry_run, st.switched) {
                (Some(f), _, _) => Err(format!("{}: {}", f.stage, f.message)),
                (None, true, _) => Ok(format!(
                    "would switch current to {}",
                    st.to.as_deref().unwrap_or("-")
                )),
                (None, false, true) => Ok(format!(
                    "current is now {}",
                    st.to.as_deref().unwrap_or("-")
                )),
                (None, false, false) => Ok("unchanged (another host failed)".into()),
            };
            if !st.warnings.is_empty() {
                let w = st.warnings.join("; ");
                text = match text {
                    Ok(t) => Ok(format!("{t}; warning: {w}")),
                    Err(t) => Err(format!("{t}; warning: {w}")),
                };
            }
            Moved {
                name: st.host.target.name.clone(),
                from: st.host.state.current.clone(),
                to: st.to,
                result: text,
            }
        })
        .collect())
}
