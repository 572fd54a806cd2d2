//! `deployer config`: the settings a command would use, resolved (the stage laid over
//! deploy.toml, defaults filled in, each selected host's reach), each with where it came from:
//! the file (and stage), the host's own entry, or the default. Values that may hold a secret
//! (a header, a URL's password) are masked. Reads no host.

use crate::config::{Config, Target, leaves};
use crate::outcome::{Outcome, Unfinished};
use std::fmt;

/// One line: a key, its value as shown, and where it came from.
pub type Setting = (String, String, String);

/// The resolved settings: `key = value  # origin` lines, then one block per selected host.
pub struct ShownConfig {
    pub heading: String,
    pub settings: Vec<Setting>,
    /// Per selected host: its name, then its lines.
    pub hosts: Vec<(String, Vec<Setting>)>,
}

/// What `cfg` resolves to for `targets`.
pub fn show_config(cfg: &Config, targets: &[Target]) -> ShownConfig {
    let heading = match &cfg.stage {
        Some(stage) => format!("stage {stage} (stages: {})", cfg.stages.join(", ")),
        None if cfg.stages.is_empty() => "no stages".to_owned(),
        None => format!("no stage chosen (stages: {})", cfg.stages.join(", ")),
    };
    let mut settings = Vec::new();
    flatten(&cfg.settings, cfg, &mut settings);
    for (key, value) in defaults(cfg) {
        if !settings.iter().any(|(k, _, _)| *k == key) {
            settings.push((key, value, "default".to_owned()));
        }
    }
    settings.sort_by(|a, b| section(&a.0).cmp(section(&b.0)).then(a.0.cmp(&b.0)));
    let hosts = targets
        .iter()
        .map(|t| (t.name.clone(), host_lines(cfg, t)))
        .collect();
    ShownConfig {
        heading,
        settings,
        hosts,
    }
}

/// Top-level keys first, then each table's.
fn section(key: &str) -> &str {
    key.rsplit_once('.').map_or("", |(s, _)| s)
}

/// Every key of `table` but `hosts` (shown per host), dotted, with its value masked and origin.
fn flatten(table: &toml::Table, cfg: &Config, out: &mut Vec<Setting>) {
    for (dotted, value) in leaves(table).into_iter().filter(|(k, _)| k != "hosts") {
        let origin = cfg.origins.get(&dotted).cloned().unwrap_or_default();
        out.push((dotted.clone(), masked(&dotted, value), origin));
    }
}

/// What a key left out resolves to.
fn defaults(cfg: &Config) -> Vec<(String, String)> {
    let q = |s: &str| format!("{s:?}");
    let d = |d: std::time::Duration| q(&humantime::format_duration(d).to_string());
    let mut out = vec![
        ("keep_releases".to_owned(), cfg.keep_releases.to_string()),
        ("log".to_owned(), q(&cfg.log)),
        ("ssh.user".to_owned(), q(&cfg.user())),
        ("ssh.port".to_owned(), "22".to_owned()),
        (
            "ssh.known_hosts".to_owned(),
            q(&cfg.known_hosts().display().to_string()),
        ),
        (
            "canary.max_error_ratio".to_owned(),
            cfg.canary.max_error_ratio.to_string(),
        ),
        (
            "canary.max_latency_ratio".to_owned(),
            cfg.canary.max_latency_ratio.to_string(),
        ),
        (
            "canary.min_error_rate".to_owned(),
            cfg.canary.min_error_rate.to_string(),
        ),
        ("canary.min_latency".to_owned(), d(cfg.canary.min_latency)),
        ("canary.interval".to_owned(), d(cfg.canary.interval)),
    ];
    if let Some(h) = &cfg.health {
        out.push(("health.retries".to_owned(), h.retries.to_string()));
        out.push(("health.interval".to_owned(), d(h.interval)));
        out.push(("health.timeout".to_owned(), d(h.timeout)));
    }
    out
}

/// One host's reach and overrides, each with its origin.
fn host_lines(cfg: &Config, t: &Target) -> Vec<Setting> {
    let from_host = |own: bool| {
        if own {
            "the host's entry".to_owned()
        } else {
            cfg.origins.get("deploy_to").cloned().unwrap_or_default()
        }
    };
    let own_deploy_to = cfg
        .hosts
        .iter()
        .any(|h| h.address == t.name && h.deploy_to.is_some());
    let user = t.route.user.clone().unwrap_or_else(|| cfg.user());
    let via = if t.route.jumps.is_empty() {
        "direct".to_owned()
    } else {
        t.route
            .jumps
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    vec![
        (
            "connects to".into(),
            format!("{user}@{}:{}", t.host, t.port),
            "[ssh], ssh_config, the address".into(),
        ),
        ("via".into(), via, "proxy_jump".into()),
        (
            "deploy_to".into(),
            format!("{:?}", t.deploy_to),
            from_host(own_deploy_to),
        ),
        (
            "roles".into(),
            format!("{:?}", t.roles),
            "the host's entry".into(),
        ),
        (
            "riemann names".into(),
            format!("{:?}", t.event_hosts),
            "riemann_host, else its names".into(),
        ),
    ]
}

/// A value as shown: a header's value, a URL's password and query values, the word after a
/// flag that carries a secret (`--bearer T`, `-a user:pw`) and any key that names a secret are
/// masked, however deep in a list or table; the rest as TOML writes it.
fn masked(key: &str, value: &toml::Value) -> String {
    let secretive = ["token", "password", "secret"]
        .iter()
        .any(|w| key.contains(w) && !key.ends_with("_file"));
    match value {
        _ if secretive => "\"***\"".to_owned(),
        toml::Value::String(s) if key.ends_with("header") => format!("{:?}", header(s)),
        toml::Value::Array(a) if key.ends_with("header") => {
            let shown: Vec<String> = a
                .iter()
                .map(|v| format!("{:?}", header(v.as_str().unwrap_or(""))))
                .collect();
            format!("[{}]", shown.join(", "))
        }
        v => shown(v),
    }
}

/// A value as TOML writes it inline (strings quoted as Rust does, which TOML reads alike), each
/// string masked as [`masked`] says.
fn shown(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{:?}", secret_words(&toolkit_core::redact::text(s))),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(x) => x.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(a) => {
            format!("[{}]", a.iter().map(shown).collect::<Vec<_>>().join(", "))
        }
        toml::Value::Table(t) => {
            let fields: Vec<String> = t
                .iter()
                .map(|(k, v)| format!("{k} = {}", masked(k, v)))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
    }
}

/// Flags whose value is a secret, in a command line (check_jsonrpc's and curl's among them).
const SECRET_FLAGS: &[&str] = &[
    "--bearer",
    "--authorization",
    "-a",
    "--password",
    "--token",
    "--secret",
    "-u",
    "--user",
];

/// Words after which the next is a credential, as in an `Authorization` header.
const SCHEMES: &[&str] = &["bearer", "basic", "token"];

/// `text` with the word after each of [`SECRET_FLAGS`] (or after its `=`) and after an
/// authorization scheme ([`SCHEMES`]) masked.
fn secret_words(text: &str) -> String {
    let mut out = Vec::new();
    let mut mask_next = false;
    for word in text.split(' ') {
        if mask_next && !word.is_empty() {
            out.push("***".to_owned());
            mask_next = false;
            continue;
        }
        match word.split_once('=') {
            Some((flag, _)) if SECRET_FLAGS.contains(&flag) => out.push(format!("{flag}=***")),
            _ => {
                let bare = word
                    .trim_matches(|c| c == '\'' || c == '"')
                    .to_ascii_lowercase();
                mask_next = SECRET_FLAGS.contains(&word) || SCHEMES.contains(&bare.as_str());
                out.push(word.to_owned());
            }
        }
    }
    out.join(" ")
}

fn header(h: &str) -> String {
    match h.split_once(':') {
        Some((name, _)) => format!("{name}: ***"),
        None => "***".to_owned(),
    }
}

const ALIGN_MAX: usize = 60;

impl fmt::Display for ShownConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "# {}", self.heading)?;
        // Aligned comments, unless a long value would push every other one far right.
        let width = self
            .settings
            .iter()
            .map(|(k, v, _)| k.len() + v.len() + 3)
            .filter(|&w| w <= ALIGN_MAX)
            .max()
            .unwrap_or(0);
        for (key, value, origin) in &self.settings {
            let line = format!("{key} = {value}");
            writeln!(f, "{line:width$}  # {origin}")?;
        }
        for (name, lines) in &self.hosts {
            writeln!(f, "\n[host {name}]")?;
            let width = lines
                .iter()
                .map(|(k, v, _)| k.len() + v.len() + 2)
                .max()
                .unwrap_or(0);
            for (key, value, origin) in lines {
                let line = format!("{key}: {value}");
                writeln!(f, "{line:width$}  # {origin}")?;
            }
        }
        Ok(())
    }
}

impl Outcome for ShownConfig {
    fn verdict(&self) -> Result<(), Unfinished> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setting_names_its_origin_and_secrets_stay_masked() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("deploy.toml");
        std::fs::write(
            &path,
            "application = \"usersvc\"\ndeploy_to = \"/srv/usersvc\"\nsource = \"dist\"\n\
             [hooks]\nafter_publish = ['curl -fsS https://ops:s3cret@hooks.example/deployed', \
             { command = 'notify --token=t0k', once = true }]\n\
             [health]\nurl = \"http://u:hunter2@{host}:8080/\"\nheader = [\"X-Api-Key: k3y\"]\n\
             command = \"check_http -H {host} -k 'Authorization: Bearer b34rer' -a usr:pa55\"\n",
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("deploy")).expect("mkdir");
        std::fs::write(
            dir.path().join("deploy/production.toml"),
            "keep_releases = 3\n[[hosts]]\naddress = \"app1:2222\"\nroles = [\"app\"]\n\
             [[hosts]]\naddress = \"db1\"\ndeploy_to = \"/srv/db\"\n",
        )
        .expect("write");
        let cfg = Config::load_stage(&path, Some("production")).unwrap_or_else(|e| panic!("{e}"));
        let targets = cfg.targets(&[], None).expect("targets");
        let shown = show_config(&cfg, &targets).to_string();
        let line = |key: &str| {
            shown
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_else(|| panic!("{key} in {shown}"))
                .to_owned()
        };
        assert!(
            shown.starts_with("# stage production (stages: production)\n"),
            "{shown}"
        );
        assert!(line("keep_releases = 3").ends_with("deploy/production.toml"));
        assert!(line("deploy_to = \"/srv/usersvc\"").ends_with("/deploy.toml"));
        assert!(line("log = \"shared/usersvc.log\"").ends_with("# default"));
        assert!(line("health.retries = 10").ends_with("# default"));
        assert!(line("health.header").contains("[\"X-Api-Key: ***\"]"));
        for secret in ["k3y", "hunter2", "s3cret", "t0k", "b34rer", "pa55"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("check_http -H {host}"),
            "hosts stay: {shown}"
        );
        assert!(shown.contains("[host app1:2222]\nconnects to: "), "{shown}");
        assert!(line("deploy_to: \"/srv/db\"").ends_with("# the host's entry"));
        assert!(
            !shown.lines().any(|l| l.starts_with("hosts")),
            "hosts are shown per host: {shown}"
        );
    }
}
