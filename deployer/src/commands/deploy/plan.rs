//! `deploy --dry-run`: what a deploy would do, read from the hosts without changing them.

use super::commands_shown::{Shown, remote_commands};
use super::{DeployError, Options};
use crate::config::{Config, Target, hooks_shown};
use crate::delta::Delta;
use crate::fleet::{self, Host};
use crate::layout::{self, LiveListing};
use crate::live_manifests::LiveManifests;
use crate::manifest::Manifest;
use crate::outcome::{Outcome, Unfinished};
use crate::settings::Settings;
use crate::table::{bytes, table};
use std::fmt;

/// What `deploy --dry-run` found: the plan, and whether a deploy now would go through.
pub struct Plan {
    text: String,
    ready: bool,
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text.trim_end())
    }
}

impl Outcome for Plan {
    fn verdict(&self) -> Result<(), Unfinished> {
        if self.ready {
            Ok(())
        } else {
            Err(Unfinished::PlanFails)
        }
    }
}

/// `deploy --dry-run`: reads every host (no lock, no change) and describes what a deploy would
/// do. The build command is not run; the plan is for the source tree as it is now.
pub fn plan(
    cfg: &Config,
    targets: &[Target],
    settings: &Settings,
    options: &Options,
) -> Result<Plan, DeployError> {
    super::check_canary(cfg, options)?;
    let tree = super::tree::read_tree(cfg, options, settings)?;
    let (manifest, revision) = (&tree.manifest, &tree.revision);
    let copies = LiveManifests::open(&cfg.application);
    let listing = LiveListing::new(manifest, &copies);
    let hosts = fleet::read(targets, settings, Some(listing), &cfg.required_shared());
    let release = layout::next_release(
        chrono::Utc::now(),
        hosts
            .iter()
            .flat_map(|h| h.state.releases.iter().map(|x| x.name.as_str())),
    );
    let mut out = format!(
        "Plan (dry run, nothing changed): deploy {} revision {revision} ({} files) as release {release}\n",
        cfg.application,
        manifest.file_count()
    );
    match (&cfg.build, &options.git_ref) {
        (_, Some(r)) => out.push_str(&format!("  from git: {r} ({revision}), nothing built\n")),
        (Some(b), None) => out.push_str(&format!("  build locally first: {b}\n")),
        (None, None) => {}
    }
    let (rows, ready) = host_rows(cfg, &hosts, manifest, &release);
    out.push_str(&table(&rows));
    out.push('\n');
    for (what, v) in steps(cfg, options) {
        if !v.is_empty() {
            out.push_str(&format!("  {what}: {v}\n"));
        }
    }
    if settings.verbose {
        let shown = Shown {
            cfg,
            selected: targets,
            release: &release,
            revision,
            branch: &tree.branch,
            hook_timeout: settings.hook_timeout,
            state_with_lock: super::locking::state_with_lock(cfg, options),
            sums: copies.offered(),
        };
        let shared = cfg.shared_paths();
        for h in hosts.iter().filter(|h| h.failure.is_none()) {
            let previous = super::previous(&h.state);
            let known = previous.as_ref().and(h.state.known.as_ref());
            let delta = Delta::new(manifest, known, &shared);
            out.push('\n');
            out.push_str(&remote_commands(&shown, h, &delta, previous.as_deref()));
        }
    }
    Ok(Plan { text: out, ready })
}

/// The table of hosts: what each would be sent, linked and cleaned up, and whether it is
/// ready; and whether all are.
fn host_rows(
    cfg: &Config,
    hosts: &[Host],
    manifest: &Manifest,
    release: &str,
) -> (Vec<Vec<String>>, bool) {
    let shared = cfg.shared_paths();
    let mut ready = true;
    let mut rows = vec![
        [
            "HOST",
            "DEPLOY_TO",
            "CURRENT",
            "SEND",
            "LINK",
            "CLEANUP",
            "STATUS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for h in hosts {
        let st = &h.state;
        let known = super::previous(st).and(st.known.as_ref());
        let delta = Delta::new(manifest, known, &shared);
        let missing = super::missing_shared(st, &h.target.deploy_to).filter(|_| st.exists);
        let status = match (&h.failure, &st.lock, &missing) {
            (Some(f), _, _) => format!("FAILS {f}"),
            (None, Some(l), _) => format!("FAILS at lock: locked by {l}"),
            (None, None, Some(why)) => format!("FAILS at shared links: {why}"),
            (None, None, None) => "ready".into(),
        };
        ready &= h.failure.is_none() && st.lock.is_none() && missing.is_none();
        let remove = layout::cleanup_after_publish(&st.releases, release, cfg.keep_releases);
        rows.push(vec![
            h.target.name.clone(),
            h.target.deploy_to.clone(),
            st.current.clone().unwrap_or_else(|| "-".into()),
            format!("{} files, {}", delta.send, bytes(delta.bytes)),
            format!("{} files", delta.link),
            if remove.is_empty() {
                "-".into()
            } else {
                remove.join(" ")
            },
            status,
        ]);
    }
    (rows, ready)
}

/// The flow's steps in order, each with what it would do (empty: not configured).
fn steps(cfg: &Config, options: &Options) -> [(&'static str, String); 9] {
    let local = |hooks: &[String]| hooks.join(" && ");
    [
        ("shared dirs", cfg.shared_dirs.join(", ")),
        (
            "shared files",
            cfg.shared_files
                .iter()
                .map(|f| {
                    if f.seed {
                        format!("{} (seeded from the release)", f.path)
                    } else {
                        f.path.clone()
                    }
                })
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("local_before", local(&cfg.hooks.local_before)),
        ("before_publish", hooks_shown(&cfg.hooks.before_publish)),
        ("after_publish", hooks_shown(&cfg.hooks.after_publish)),
        ("publish", publishing(cfg, options)),
        ("health", health_shown(cfg)),
        ("local_failed", local(&cfg.hooks.local_failed)),
        ("local_after", local(&cfg.hooks.local_after)),
    ]
}

/// How hosts would be published: all at once, in batches, or a canary first.
fn publishing(cfg: &Config, options: &Options) -> String {
    match (options.rolling, options.canary) {
        (n, Some(w)) => format!(
            "canary first: {} host(s), watched for {} (health gate{}), then {}",
            n.unwrap_or(1),
            humantime::format_duration(w),
            if cfg.riemann.is_some() {
                ", and errors rate and latency p99 in Riemann against the old release"
            } else {
                ""
            },
            n.map_or("the rest at once".to_owned(), |n| format!(
                "{n} host(s) at a time"
            )),
        ),
        (Some(n), None) => format!("{n} host(s) at a time, health gate between batches"),
        (None, None) => "all hosts at once, once all are staged".into(),
    }
}

/// The health gate's checks: the JSON-RPC call and/or the plugin command.
fn health_shown(cfg: &Config) -> String {
    let Some(h) = &cfg.health else {
        return String::new();
    };
    [
        h.url
            .as_ref()
            .map(|u| format!("{u} {}", h.method.as_deref().unwrap_or("ping"))),
        h.command.clone(),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" and ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(extra: &str) -> Config {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("deploy.toml");
        let text = format!(
            "application = \"usersvc\"\ndeploy_to = \"/srv/usersvc\"\nsource = \"dist\"\n\
             shared_dirs = [\"log\"]\n{extra}\n[[hosts]]\naddress = \"app1\"\n"
        );
        std::fs::write(&path, text).expect("write");
        Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
    }

    fn step(cfg: &Config, options: &Options, name: &str) -> String {
        steps(cfg, options)
            .into_iter()
            .find(|(what, _)| *what == name)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no step {name}"))
    }

    #[test]
    fn the_plan_says_how_hosts_would_be_published() {
        let cfg = config("");
        let all = Options::default();
        assert_eq!(
            step(&cfg, &all, "publish"),
            "all hosts at once, once all are staged"
        );
        let rolling = Options {
            rolling: Some(2),
            ..Options::default()
        };
        assert_eq!(
            step(&cfg, &rolling, "publish"),
            "2 host(s) at a time, health gate between batches"
        );
        let canary = Options {
            canary: Some(Duration::from_secs(30)),
            ..Options::default()
        };
        assert_eq!(
            step(&cfg, &canary, "publish"),
            "canary first: 1 host(s), watched for 30s (health gate), then the rest at once"
        );
        let with_riemann = config("[riemann]\nserver = \"riemann:5555\"");
        assert!(
            step(&with_riemann, &canary, "publish")
                .contains("and errors rate and latency p99 in Riemann against the old release")
        );
    }

    #[test]
    fn steps_not_configured_are_empty_and_the_gate_shows_what_it_checks() {
        let cfg = config("");
        let options = Options::default();
        assert_eq!(step(&cfg, &options, "shared dirs"), "log");
        assert_eq!(step(&cfg, &options, "health"), "");
        assert_eq!(step(&cfg, &options, "local_before"), "");
        let cfg = config(
            "[hooks]\nlocal_before = [\"make\", \"make check\"]\n\
             [health]\nurl = \"http://{host}:8080/\"\ncommand = \"check_disk\"",
        );
        assert_eq!(step(&cfg, &options, "local_before"), "make && make check");
        assert_eq!(
            step(&cfg, &options, "health"),
            "http://{host}:8080/ ping and check_disk"
        );
    }
}
