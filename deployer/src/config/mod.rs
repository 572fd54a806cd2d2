//! `deploy.toml`: its schema (every key is shown in `packaging/deploy.toml`), strict (an unknown
//! key is an error that names it), with paths relative to the file and `~` expanded.

mod canary;
mod health;
mod hooks;
mod reach;
mod select;
mod stage;

pub use canary::{Canary, Riemann};
pub use health::Health;
pub use hooks::{Hook, Hooks, Task, hook_commands, hooks_shown, where_shown};
pub use select::Target;
pub use stage::{Origins, leaves};

use crate::ssh::{BadJump, HostKeyPolicy, Route, SshSettings};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub application: String,
    pub deploy_to: String,
    #[serde(default = "default_keep")]
    pub keep_releases: usize,
    /// The directory that becomes a release (relative to the config file).
    pub source: PathBuf,
    /// Run locally before upload.
    pub build: Option<String>,
    #[serde(default)]
    pub shared_dirs: Vec<String>,
    /// Files every release links from `shared/`: each must be there before a deploy (as
    /// Capistrano's `linked_files`), unless written `{ path = "…", seed = true }`, which copies
    /// the release's own file there the first time.
    #[serde(default)]
    pub shared_files: Vec<SharedFile>,
    /// Paths of `source` that never travel (gitignore patterns); `.git` never does.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub ssh: Ssh,
    /// Required once the stage is laid over (a `deploy.toml` with stages may leave them to
    /// each stage).
    #[serde(default)]
    pub hosts: Vec<Host>,
    #[serde(default)]
    pub hooks: Hooks,
    /// `[tasks.NAME]`: commands run by hand (`deployer run NAME`) or named by a hook.
    #[serde(default)]
    pub tasks: std::collections::BTreeMap<String, Task>,
    pub health: Option<Health>,
    pub riemann: Option<Riemann>,
    /// How `deploy --canary` judges the first batch against the rest.
    #[serde(default)]
    pub canary: Canary,
    /// The service's log on each host, relative to `deploy_to` (`deployer logs`).
    #[serde(default = "default_log")]
    pub log: String,
    /// The config file's directory: relative paths and `build` start there.
    #[serde(skip)]
    pub base: PathBuf,
    /// `[stages.NAME]` tables: read by `stage.rs`, never a setting themselves.
    #[serde(default, rename = "stages")]
    _stages: Option<toml::Table>,
    /// The stage laid over `deploy.toml` (`-s NAME`), and every stage it defines.
    #[serde(skip)]
    pub stage: Option<String>,
    #[serde(skip)]
    pub stages: Vec<String>,
    /// Where each key set in a file came from, and the settings as the files wrote them, the
    /// stage laid over (`deployer config`).
    #[serde(skip)]
    pub origins: Origins,
    #[serde(skip)]
    pub settings: toml::Table,
}

fn default_keep() -> usize {
    5
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// [default: $USER]
    pub user: Option<String>,
    /// [default: 22]
    pub port: Option<u16>,
    /// Private key file; agent authentication when left out.
    pub identity: Option<PathBuf>,
    /// [default: ~/.ssh/known_hosts]
    pub known_hosts: Option<PathBuf>,
    /// Jump hosts for every host, as OpenSSH's ProxyJump: `[user@]host[:port]`, comma-separated.
    pub proxy_jump: Option<String>,
    /// Read HostName, User, Port, IdentityFile and ProxyJump for the hosts from this OpenSSH
    /// client config (opt-in; this file's own keys win).
    pub ssh_config: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    /// `name` or `name:port`.
    pub address: String,
    #[serde(default)]
    pub roles: Vec<String>,
    pub deploy_to: Option<String>,
    /// Jump hosts for this host only (`"none"`: straight there, whatever `[ssh]` says).
    pub proxy_jump: Option<String>,
    /// The host name this host's events carry in Riemann (usersvc's `riemann_host`) [default:
    /// its address's host name, or that name's first label]: the canary trusts only events of
    /// the deploy's hosts.
    pub riemann_host: Option<String>,
    /// Where and how to connect, resolved when the file is read.
    #[serde(skip)]
    reach: Reach,
}

/// Where a host is reached, and how, after `ssh_config` and the jump chain are resolved.
#[derive(Debug, Clone, Default)]
struct Reach {
    host: String,
    port: u16,
    route: Route,
}

/// A `shared_files` entry: a path, or `{ path = "…", seed = true }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SharedSpec")]
pub struct SharedFile {
    pub path: String,
    /// Copied from the release the first time, instead of required in `shared/`.
    pub seed: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SharedSpec {
    Path(String),
    Table(SharedTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SharedTable {
    path: String,
    #[serde(default)]
    seed: bool,
}

impl From<SharedSpec> for SharedFile {
    fn from(spec: SharedSpec) -> Self {
        match spec {
            SharedSpec::Path(path) => SharedFile { path, seed: false },
            SharedSpec::Table(t) => SharedFile {
                path: t.path,
                seed: t.seed,
            },
        }
    }
}

fn default_log() -> String {
    "shared/usersvc.log".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {problem}")]
    Invalid { path: PathBuf, problem: Problem },
}

/// What is wrong inside a `deploy.toml`.
#[derive(Debug, thiserror::Error)]
pub enum Problem {
    /// Syntax, an unknown key, a wrong type: the TOML reader's own words, with the line.
    #[error("{0}")]
    Toml(String),
    #[error("no [[hosts]]: add at least one `[[hosts]] address = \"app1:22\"`")]
    NoHosts,
    #[error("keep_releases must be at least 1")]
    KeepNone,
    #[error("deploy_to {0:?} must be an absolute path")]
    RelativeDeployTo(String),
    #[error("shared path {0:?} must be relative to the release, without '..'")]
    SharedPath(String),
    #[error("log {0:?} must be relative to deploy_to, without '..' (e.g. shared/usersvc.log)")]
    LogPath(String),
    #[error("bad address {0:?}")]
    Address(String),
    #[error("bad port in {0:?}")]
    Port(String),
    #[error("[health] {0}")]
    CheckOption(String),
    #[error("[health] method and check_jsonrpc's options need a url")]
    MethodWithoutUrl,
    #[error("{0}")]
    Jump(#[from] BadJump),
    #[error("[canary] {0}")]
    Canary(&'static str),
    #[error("[ssh] ssh_config: {0}")]
    SshConfig(String),
    #[error("{0}")]
    Exclude(String),
    #[error("stage {0:?} is defined twice: as [stages.{0}] and in {1}")]
    StageTwice(String, String),
    #[error("[hooks] names task {0:?}, which is not defined: the tasks are {1}")]
    UnknownTask(String, String),
    #[error("{0} names role {1:?}, which no host has: the roles are {2}")]
    UnknownRole(String, String, String),
    #[error("stage {0:?}: a stage is named with letters, digits, '-' and '_'")]
    StageName(String),
    #[error("no stage {0:?}: the stages are {1}")]
    NoStage(String, String),
    #[error("{0}: it holds what the stages share; choose one with -s STAGE (its stages: {1})")]
    ChooseStage(String, String),
}

/// `--hosts`/`--role` select nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(
        "--hosts {name:?} is not in the config; its hosts are {known} (as written there, or their host names)"
    )]
    UnknownHost { name: String, known: String },
    #[error("no host matches --hosts/--role (the config's roles: {roles})")]
    NoneMatch { roles: String },
    #[error(transparent)]
    Address(#[from] Problem),
}

fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_owned(),
    }
}

/// `~/x` → `$HOME/x`; a relative path is taken from the config file's directory.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    let p = expand_home(p);
    if p.is_absolute() { p } else { base.join(p) }
}

/// A key of the top of deploy.toml is missing (one a stage could give).
fn missing_top_level(e: &Problem) -> bool {
    let text = e.to_string();
    ["application", "deploy_to", "source"]
        .iter()
        .any(|k| text.contains(&format!("missing field `{k}`")))
}

impl Config {
    /// Reads and checks `path`; relative paths become relative to its directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_stage(path, None)
    }

    /// As [`Config::load`], with `stage` (`deploy/<stage>.toml` or `[stages.<stage>]`) laid
    /// over `path`.
    pub fn load_stage(path: &Path, stage: Option<&str>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let invalid = |problem: Problem| ConfigError::Invalid {
            path: path.to_owned(),
            problem,
        };
        let toml_error = |e: toml::de::Error| Problem::Toml(e.to_string().trim().to_owned());
        let table: toml::Table = toml::from_str(&text).map_err(|e| invalid(toml_error(e)))?;
        let stages = stage::names(path, &table);
        let layered = stage::layer(path, table, stage)
            .map_err(|(path, problem)| ConfigError::Invalid { path, problem })?;
        let choose = |e: Problem| match e {
            Problem::NoHosts | Problem::Toml(_)
                if stage.is_none()
                    && !stages.is_empty()
                    && (matches!(e, Problem::NoHosts) || missing_top_level(&e)) =>
            {
                Problem::ChooseStage(e.to_string(), stage::listed(&stages))
            }
            e => e,
        };
        let settings = layered.table.clone();
        let mut cfg: Config = match &layered.stage {
            // From the text: the TOML reader's errors then carry their line.
            None => toml::from_str(&text).map_err(|e| invalid(choose(toml_error(e))))?,
            Some(name) => {
                toml::Value::Table(layered.table)
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::Invalid {
                        path: PathBuf::from(format!("{} with stage {name}", path.display())),
                        problem: toml_error(e),
                    })?
            }
        };
        cfg.stage = layered.stage;
        cfg.stages = stages.clone();
        cfg.origins = layered.origins;
        cfg.settings = settings;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        cfg.source = resolve(&base, &cfg.source);
        cfg.base = if base.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            base.clone()
        };
        cfg.ssh.identity = cfg.ssh.identity.as_deref().map(|p| resolve(&base, p));
        cfg.ssh.known_hosts = cfg.ssh.known_hosts.as_deref().map(|p| resolve(&base, p));
        cfg.ssh.ssh_config = cfg.ssh.ssh_config.as_deref().map(|p| resolve(&base, p));
        if let Some(h) = &mut cfg.health {
            h.prepare(&base).map_err(invalid)?;
        }
        cfg.check().map_err(|e| invalid(choose(e)))?;
        cfg.name_tasks().map_err(invalid)?;
        cfg.resolve_reach().map_err(invalid)?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), Problem> {
        if self.hosts.is_empty() {
            return Err(Problem::NoHosts);
        }
        if self.keep_releases == 0 {
            return Err(Problem::KeepNone);
        }
        self.check_paths()?;
        for h in &self.hosts {
            self.split_address(&h.address)?;
        }
        self.canary.check()?;
        match &self.health {
            Some(h) => h.check(),
            None => Ok(()),
        }
    }

    /// `deploy_to` absolute; `log` and the shared paths inside the deploy directory.
    fn check_paths(&self) -> Result<(), Problem> {
        let inside =
            |p: &str| !(p.starts_with('/') || p.split('/').any(|c| c == "..") || p.is_empty());
        if !inside(&self.log) {
            return Err(Problem::LogPath(self.log.clone()));
        }
        for d in std::iter::once(&self.deploy_to)
            .chain(self.hosts.iter().filter_map(|h| h.deploy_to.as_ref()))
        {
            if !d.starts_with('/') {
                return Err(Problem::RelativeDeployTo(d.clone()));
            }
        }
        for s in self.shared_paths() {
            if !inside(&s) {
                return Err(Problem::SharedPath(s));
            }
        }
        crate::manifest::Exclude::new(&self.source, &self.exclude)
            .map(drop)
            .map_err(|e| Problem::Exclude(e.to_string()))
    }

    /// `shared_dirs` and `shared_files` together.
    pub fn shared_paths(&self) -> Vec<String> {
        self.shared_dirs
            .iter()
            .cloned()
            .chain(self.shared_files.iter().map(|f| f.path.clone()))
            .collect()
    }

    /// The shared files each host must hold in `shared/` before a deploy (not seeded).
    pub fn required_shared(&self) -> Vec<String> {
        self.shared_files
            .iter()
            .filter(|f| !f.seed)
            .map(|f| f.path.clone())
            .collect()
    }

    /// `shared_files` as the staging step takes them: each path, and whether it is seeded.
    pub fn shared_file_specs(&self) -> Vec<(String, bool)> {
        self.shared_files
            .iter()
            .map(|f| (f.path.clone(), f.seed))
            .collect()
    }

    pub fn user(&self) -> String {
        self.ssh
            .user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "root".into())
    }

    /// How to reach the hosts: `[ssh]` with the command line's host-key policy and timeout.
    pub fn ssh_settings(&self, policy: HostKeyPolicy, timeout: Duration) -> SshSettings {
        SshSettings {
            user: self.user(),
            identity: self.ssh.identity.clone(),
            known_hosts: self.known_hosts(),
            policy,
            timeout,
        }
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.ssh
            .known_hosts
            .clone()
            .unwrap_or_else(|| expand_home(Path::new("~/.ssh/known_hosts")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("deploy.toml");
        std::fs::write(&path, text).expect("write");
        Config::load(&path)
    }

    const MINIMAL: &str = "application = \"usersvc\"\ndeploy_to = \"/srv/usersvc\"\nsource = \"dist\"\n[[hosts]]\naddress = \"app1:2222\"\nroles = [\"app\"]\n[[hosts]]\naddress = \"db1\"\ndeploy_to = \"/srv/other\"\n";

    /// `deploy.toml` with what the stages share, `deploy/production.toml` and an inline
    /// `[stages.staging]`.
    fn staged(dir: &Path) -> PathBuf {
        let path = dir.join("deploy.toml");
        std::fs::write(
            &path,
            "application = \"usersvc\"\ndeploy_to = \"/srv/usersvc\"\nsource = \"dist\"\n\
             [ssh]\nuser = \"deploy\"\nport = 2200\n\
             [stages.staging]\ndeploy_to = \"/srv/staging\"\n\
             [[stages.staging.hosts]]\naddress = \"stage1\"\n",
        )
        .expect("write");
        std::fs::create_dir(dir.join("deploy")).expect("mkdir");
        std::fs::write(
            dir.join("deploy/production.toml"),
            "keep_releases = 3\n[ssh]\nuser = \"ops\"\n\
             [[hosts]]\naddress = \"app1\"\n[[hosts]]\naddress = \"app2\"\n",
        )
        .expect("write");
        path
    }

    #[test]
    fn a_stage_overrides_what_the_stages_share() {
        let dir = tempfile::tempdir().expect("dir");
        let path = staged(dir.path());
        let prod = Config::load_stage(&path, Some("production")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(prod.stage.as_deref(), Some("production"));
        assert_eq!(prod.stages, ["production", "staging"]);
        assert_eq!(prod.keep_releases, 3);
        assert_eq!(prod.deploy_to, "/srv/usersvc", "shared, not overridden");
        assert_eq!(
            (prod.user(), prod.ssh.port),
            ("ops".to_owned(), Some(2200)),
            "[ssh] merged"
        );
        let hosts: Vec<_> = prod.hosts.iter().map(|h| h.address.as_str()).collect();
        assert_eq!(hosts, ["app1", "app2"]);
        assert!(prod.origins["ssh.user"].ends_with("deploy/production.toml"));
        assert!(prod.origins["ssh.port"].ends_with("deploy.toml"));
        let staging = Config::load_stage(&path, Some("staging")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(staging.deploy_to, "/srv/staging");
        assert_eq!(staging.hosts.len(), 1);
        assert!(staging.origins["deploy_to"].ends_with("[stages.staging]"));
    }

    #[test]
    fn a_stage_that_is_missing_unclear_or_wrong_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let path = staged(dir.path());
        let e = Config::load_stage(&path, Some("prod")).expect_err("no such stage");
        assert!(
            e.to_string()
                .ends_with("no stage \"prod\": the stages are production, staging"),
            "{e}"
        );
        let e = Config::load(&path).expect_err("the shared part has no hosts");
        assert!(
            e.to_string()
                .contains("choose one with -s STAGE (its stages: production, staging)"),
            "{e}"
        );
        let e = Config::load_stage(&path, Some("../deploy")).expect_err("a path");
        assert!(e.to_string().contains("letters, digits"), "{e}");
        std::fs::write(
            dir.path().join("deploy/staging.toml"),
            "keep_releases = 2\n",
        )
        .expect("write");
        let e = Config::load_stage(&path, Some("staging")).expect_err("twice");
        assert!(e.to_string().contains("defined twice"), "{e}");
        std::fs::write(
            dir.path().join("deploy/production.toml"),
            "keep_relases = 2\n",
        )
        .expect("write");
        let e = Config::load_stage(&path, Some("production")).expect_err("a typo in the stage");
        assert!(e.to_string().contains("with stage production"), "{e}");
        assert!(e.to_string().contains("keep_relases"), "{e}");
        // Without stages, the error keeps the TOML reader's line.
        let e = load(&format!("{MINIMAL}\nkeep_relases = 3\n")).expect_err("typo");
        assert!(e.to_string().contains("line"), "{e}");
    }

    #[test]
    fn the_shipped_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/deploy.toml");
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.application, "usersvc");
        assert!(cfg.source.is_absolute());
    }

    #[test]
    fn defaults_targets_and_selection() {
        let cfg = load(MINIMAL).expect("valid");
        assert_eq!(cfg.keep_releases, 5);
        let all = cfg.targets(&[], None).expect("all");
        assert_eq!(
            all.iter()
                .map(|t| (t.host.as_str(), t.port, t.deploy_to.as_str()))
                .collect::<Vec<_>>(),
            [("app1", 2222, "/srv/usersvc"), ("db1", 22, "/srv/other")]
        );
        assert_eq!(cfg.targets(&[], Some("app")).expect("role").len(), 1);
        assert_eq!(
            cfg.targets(&["db1".into()], None).expect("named")[0].host,
            "db1"
        );
        let unknown = cfg.targets(&["app1.example.com".into()], None);
        assert_eq!(
            unknown.err().map(|e| e.to_string()).as_deref(),
            Some(
                "--hosts \"app1.example.com\" is not in the config; its hosts are app1:2222, db1 (as written there, or their host names)"
            )
        );
        let unmatched = cfg.targets(&[], Some("web")).err().map(|e| e.to_string());
        assert_eq!(
            unmatched.as_deref(),
            Some("no host matches --hosts/--role (the config's roles: app)")
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let e = load(&format!("{MINIMAL}\nkeep_relases = 3\n")).expect_err("typo");
        assert!(e.to_string().contains("keep_relases"), "{e}");
        let e = load(&MINIMAL.replace(
            "[[hosts]]\naddress = \"db1\"",
            "[[hosts]]\nadress = \"db1\"",
        ))
        .expect_err("typo");
        assert!(e.to_string().contains("adress"), "{e}");
        assert!(load(&MINIMAL.replace("/srv/usersvc", "srv")).is_err());
        assert!(load(&format!("shared_dirs = [\"../etc\"]\n{MINIMAL}")).is_err());
        assert!(
            load("application = \"x\"\ndeploy_to = \"/x\"\nsource = \"d\"\nhosts = []\n").is_err()
        );
    }

    const FLEET: &str = "application = \"usersvc\"\ndeploy_to = \"/srv/usersvc\"\nsource = \"dist\"\n\
        [[hosts]]\naddress = \"app1\"\nroles = [\"app\"]\n[[hosts]]\naddress = \"app2\"\nroles = [\"app\"]\n\
        [[hosts]]\naddress = \"db1\"\nroles = [\"db\"]\n[[hosts]]\naddress = \"db2\"\nroles = [\"db\"]\n";

    #[test]
    fn a_hook_is_a_line_a_table_with_roles_and_once_or_a_task() {
        let cfg = load(&format!(
            "{FLEET}[hooks]\nbefore_publish = [\"a\", {{ command = \"migrate\", once = true }}, \
             {{ command = \"warm\", roles = [\"app\"] }}, {{ task = \"seed\" }}]\n\
             [tasks.seed]\ncommand = \"./seed\"\nroles = [\"db\"]\nonce = true\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let hooks = &cfg.hooks.before_publish;
        let on = |selected: &[Target]| -> Vec<Vec<String>> {
            selected
                .iter()
                .map(|t| hook_commands(hooks, t, selected))
                .collect()
        };
        let all = cfg.targets(&[], None).expect("all");
        assert_eq!(
            on(&all),
            [
                vec!["a", "migrate", "warm"],
                vec!["a", "warm"],
                vec!["a", "./seed"],
                vec!["a"],
            ]
        );
        // `once` is the first selected host: with --role db, db1 migrates.
        let db = cfg.targets(&[], Some("db")).expect("db");
        assert_eq!(on(&db), [vec!["a", "migrate", "./seed"], vec!["a"]]);
        let shown = hooks_shown(hooks);
        assert!(
            shown.contains("migrate (once, on the first host)"),
            "{shown}"
        );
        assert!(shown.contains("warm (roles app)"), "{shown}");
        assert!(
            shown.contains("task seed: ./seed (once, on the first host with role db)"),
            "{shown}"
        );
    }

    #[test]
    fn a_misspelt_hook_task_or_role_is_named() {
        let bad = |tables: &str| {
            load(&format!("{FLEET}{tables}"))
                .expect_err(tables)
                .to_string()
        };
        let e = bad("[hooks]\nbefore_publish = [{ command = \"x\", onse = true }]\n");
        assert!(e.contains("before_publish"), "{e}");
        let e = bad("[hooks]\nafter_publish = [{ task = \"migrate\" }]\n");
        assert!(
            e.contains("names task \"migrate\", which is not defined: the tasks are none"),
            "{e}"
        );
        let e = bad("[hooks]\nafter_publish = [{ command = \"x\", roles = [\"bd\"] }]\n");
        assert!(
            e.contains(
                "[hooks] after_publish names role \"bd\", which no host has: the roles are app, db"
            ),
            "{e}"
        );
        let e = bad("[tasks.m]\ncommand = \"x\"\nroles = [\"web\"]\n");
        assert!(e.contains("[tasks.m] names role \"web\""), "{e}");
        let e = bad(
            "[tasks.m]\ncommand = \"x\"\n[hooks]\nafter_publish = [{ task = \"m\", once = true }]\n",
        );
        assert!(e.contains("takes its roles and once from [tasks.m]"), "{e}");
    }

    #[test]
    fn the_gate_takes_tls_and_proxy_options_as_check_jsonrpc_does() {
        let cfg = load(&format!(
            "{MINIMAL}[health]\nurl = \"https://{{host}}:8443/\"\nclient_cert = \"client.pem\"\n\
             client_key = \"client.key\"\nproxy = \"http://proxy:3128\"\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let args = cfg.health.expect("[health]").check_args();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).expect(flag);
            args[i + 1].clone()
        };
        // Relative paths are the config file's directory's, as ca_file.
        assert!(after("--client-cert").ends_with("/client.pem"), "{args:?}");
        assert!(Path::new(&after("--client-key")).is_absolute(), "{args:?}");
        assert_eq!(after("--proxy"), "http://proxy:3128");
        let e = load(&format!(
            "{MINIMAL}[health]\nurl = \"http://{{host}}/\"\nproxy = \"proxy:3128\"\n"
        ))
        .expect_err("not a URL");
        assert!(e.to_string().contains("--proxy"), "{e}");
    }

    #[test]
    fn every_check_jsonrpc_option_is_a_health_key_and_nothing_else_is() {
        // Options the hand-written list never had: one parser, one list.
        let cfg = load(&format!(
            "{MINIMAL}[health]\nurl = \"http://{{host}}/\"\nmethod = \"get_users\"\ncount = \"\"\n\
             label = \"users\"\nmax_size = 4096\nexpect = ['/0/id=\"a\"', '/0/rev=1']\ninsecure = false\n"
        ))
        .unwrap_or_else(|e| panic!("{e}"));
        let args = cfg.health.expect("[health]").check_args();
        for want in ["--label", "users", "--max-size", "4096", "--count"] {
            assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
        }
        assert_eq!(
            args.iter().filter(|a| *a == "--expect").count(),
            2,
            "{args:?}"
        );
        assert!(
            !args.iter().any(|a| a == "--insecure"),
            "false is no flag: {args:?}"
        );
        for (toml, said) in [
            ("expcet = '/a=1'", "--expcet"),
            ("retires = 3", "--retires"),
            ("bearer = 's3cret'", "bearer_file"),
            ("hostname = 'app1'", "url"),
            ("header = { a = 1 }", "a string, a number, true, or a list"),
        ] {
            let e = load(&format!(
                "{MINIMAL}[health]\nurl = \"http://{{host}}/\"\n{toml}\n"
            ))
            .expect_err(toml);
            let e = e.to_string();
            assert!(e.contains("[health]") && e.contains(said), "{toml}: {e}");
            assert!(!e.contains("s3cret"), "{e}");
        }
    }

    #[test]
    fn ssh_config_fills_in_what_deploy_toml_leaves_out() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(
            dir.path().join("ssh_config"),
            "Host app*\n  HostName 10.1.2.3\n  Port 2222\n  User someone\n  IdentityFile /keys/app\n  ProxyJump gw\n\
             Host gw\n  HostName 10.9.9.9\n  User jumper\n  Port 2200\n",
        )
        .expect("ssh_config");
        let path = dir.path().join("deploy.toml");
        let write = |ssh: &str, hosts: &str| {
            std::fs::write(
                &path,
                format!("application = \"a\"\ndeploy_to = \"/srv/a\"\nsource = \"d\"\n[ssh]\nssh_config = \"ssh_config\"\n{ssh}\n{hosts}"),
            )
            .expect("write");
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"))
        };
        let cfg = write("", "[[hosts]]\naddress = \"app1\"\n");
        let t = &cfg.targets(&[], None).expect("targets")[0];
        assert_eq!(
            (t.name.as_str(), t.host.as_str(), t.port),
            ("app1", "10.1.2.3", 2222)
        );
        assert_eq!(t.route.user.as_deref(), Some("someone"));
        assert_eq!(t.route.identity.as_deref(), Some(Path::new("/keys/app")));
        assert_eq!(
            t.route
                .jumps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["jumper@10.9.9.9:2200"],
            "the jump host's own entry is read too"
        );
        assert_eq!(
            cfg.targets(&["10.1.2.3".into()], None)
                .expect("by HostName")
                .len(),
            1
        );
        // deploy.toml wins: its port, user, key and jumps ("none": straight there).
        let cfg = write(
            "user = \"deploy\"\nidentity = \"/keys/mine\"\nproxy_jump = \"ops@bastion\"",
            "[[hosts]]\naddress = \"app1:22\"\n[[hosts]]\naddress = \"app2\"\nproxy_jump = \"none\"\n",
        );
        let t = cfg.targets(&[], None).expect("targets");
        assert_eq!(
            (
                t[0].port,
                t[0].route.user.as_ref(),
                t[0].route.identity.as_ref()
            ),
            (22, None, None)
        );
        assert_eq!(t[0].route.jumps[0].to_string(), "ops@bastion:22");
        assert!(t[1].route.jumps.is_empty());
        let e = Config::load(&{
            std::fs::write(
                &path,
                "application = \"a\"\ndeploy_to = \"/srv/a\"\nsource = \"d\"\n[ssh]\nproxy_jump = \"-oProxyCommand=x\"\n[[hosts]]\naddress = \"h\"\n",
            )
            .expect("write");
            path.clone()
        })
        .expect_err("not a jump chain");
        assert!(e.to_string().contains("proxy_jump"), "{e}");
    }
}
