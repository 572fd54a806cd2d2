//! Stages, as Capistrano's `config/deploy.rb` and `config/deploy/<stage>.rb`: `deploy.toml`
//! holds what every stage shares, and a stage overrides it, from `deploy/<stage>.toml` beside it
//! or a `[stages.NAME]` table in it (`deployer -s NAME`). Tables merge key by key, the stage
//! winning; any other value, `[[hosts]]` included, is the stage's whole. Paths in a stage are
//! relative to deploy.toml's directory, the project's, as all of Capistrano's are. Each key
//! remembers the file it came from, for `deployer config`.

use super::Problem;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Where each setting came from, by dotted key (`deploy_to`, `ssh.user`, `hosts`).
pub type Origins = BTreeMap<String, String>;

/// The settings of one stage (or of `deploy.toml` alone), and where each key came from.
pub struct Layered {
    pub table: toml::Table,
    pub origins: Origins,
    pub stage: Option<String>,
}

/// The directory of stage files beside `deploy.toml`: `deploy/`.
fn stage_dir(config: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new("")).join(STAGE_DIR)
}

const STAGE_DIR: &str = "deploy";

/// The stages `config` defines: its `[stages.NAME]` tables and its `deploy/*.toml` files.
pub fn names(config: &Path, table: &toml::Table) -> Vec<String> {
    let mut out: Vec<String> = inline(table).keys().cloned().collect();
    if let Ok(entries) = std::fs::read_dir(stage_dir(config)) {
        for path in entries.flatten().map(|e| e.path()) {
            if path.extension().is_some_and(|e| e == "toml")
                && let Some(stem) = path.file_stem().and_then(|s| s.to_str())
            {
                out.push(stem.to_owned());
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

fn inline(table: &toml::Table) -> toml::Table {
    match table.get("stages") {
        Some(toml::Value::Table(t)) => t.clone(),
        _ => toml::Table::new(),
    }
}

/// `base` (the text of `config`, already parsed) with `stage` laid over it. `Err` names the file
/// at fault: the stage file that does not parse, or `config` when the stage is unknown.
pub fn layer(
    config: &Path,
    mut base: toml::Table,
    stage: Option<&str>,
) -> Result<Layered, (PathBuf, Problem)> {
    let shown = config.display().to_string();
    let stages = names(config, &base);
    let inline = inline(&base);
    if base.contains_key("stages") && !matches!(base.get("stages"), Some(toml::Value::Table(_))) {
        return Err((
            config.to_owned(),
            Problem::Toml("stages must be a table of stages".into()),
        ));
    }
    base.remove("stages");
    let mut origins = Origins::new();
    record(&base, &shown, &mut origins);
    let Some(name) = stage else {
        return Ok(Layered {
            table: base,
            origins,
            stage: None,
        });
    };
    let (over, from) = stage_table(config, &inline, name, &stages)?;
    record(&over, &from, &mut origins);
    merge(&mut base, over);
    Ok(Layered {
        table: base,
        origins,
        stage: Some(name.to_owned()),
    })
}

/// The table of stage `name` and where it was written: `deploy/NAME.toml` or `[stages.NAME]`.
fn stage_table(
    config: &Path,
    inline: &toml::Table,
    name: &str,
    stages: &[String],
) -> Result<(toml::Table, String), (PathBuf, Problem)> {
    let fail = |problem| Err((config.to_owned(), problem));
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return fail(Problem::StageName(name.to_owned()));
    }
    let file = stage_dir(config).join(format!("{name}.toml"));
    let (over, from) = match (inline.get(name), file.is_file()) {
        (Some(_), true) => {
            return fail(Problem::StageTwice(
                name.to_owned(),
                file.display().to_string(),
            ));
        }
        (Some(toml::Value::Table(t)), false) => {
            (t.clone(), format!("{} [stages.{name}]", config.display()))
        }
        (Some(_), false) => return fail(Problem::Toml(format!("[stages.{name}] must be a table"))),
        (None, true) => (read(&file)?, file.display().to_string()),
        (None, false) => return fail(Problem::NoStage(name.to_owned(), listed(stages))),
    };
    if over.contains_key("stages") {
        return fail(Problem::Toml(
            "a stage cannot hold stages of its own".into(),
        ));
    }
    Ok((over, from))
}

/// The stages as an error lists them.
pub fn listed(stages: &[String]) -> String {
    if stages.is_empty() {
        format!("none (add {STAGE_DIR}/<stage>.toml beside deploy.toml, or [stages.<stage>] in it)")
    } else {
        stages.join(", ")
    }
}

fn read(file: &Path) -> Result<toml::Table, (PathBuf, Problem)> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        (
            file.to_owned(),
            Problem::Toml(format!("cannot read it: {e}")),
        )
    })?;
    toml::from_str(&text).map_err(|e| {
        (
            file.to_owned(),
            Problem::Toml(e.to_string().trim().to_owned()),
        )
    })
}

/// `over` laid on `into`: tables merged key by key, anything else replaced.
fn merge(into: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(mine)), toml::Value::Table(theirs)) => merge(mine, theirs),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

/// Every value of `table` that is not a table, under its dotted key (`ssh.user`), in order.
pub fn leaves(table: &toml::Table) -> Vec<(String, &toml::Value)> {
    fn walk<'t>(table: &'t toml::Table, prefix: &str, out: &mut Vec<(String, &'t toml::Value)>) {
        for (key, value) in table {
            let dotted = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(t) => walk(t, &dotted, out),
                v => out.push((dotted, v)),
            }
        }
    }
    let mut out = Vec::new();
    walk(table, "", &mut out);
    out
}

/// Notes `from` as the origin of every key of `table` (tables key by key).
fn record(table: &toml::Table, from: &str, origins: &mut Origins) {
    for (dotted, _) in leaves(table) {
        // A stage's whole value replaces the keys under it that came from elsewhere.
        let under = format!("{dotted}.");
        origins.retain(|k, _| !k.starts_with(&under));
        origins.insert(dotted, from.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).expect("toml")
    }

    #[test]
    fn tables_merge_key_by_key_and_other_values_are_replaced() {
        let mut base = table(
            "deploy_to = \"/srv/a\"\n[ssh]\nuser = \"deploy\"\nport = 22\n[[hosts]]\naddress = \"a\"\n",
        );
        merge(
            &mut base,
            table("[ssh]\nport = 2222\n[[hosts]]\naddress = \"b\"\n[[hosts]]\naddress = \"c\"\n"),
        );
        assert_eq!(base["deploy_to"].as_str(), Some("/srv/a"));
        assert_eq!(base["ssh"]["user"].as_str(), Some("deploy"));
        assert_eq!(base["ssh"]["port"].as_integer(), Some(2222));
        let hosts = base["hosts"].as_array().expect("hosts");
        assert_eq!(hosts.len(), 2, "the stage's hosts, not both lists");
    }

    #[test]
    fn each_key_names_the_file_it_came_from() {
        let mut origins = Origins::new();
        record(
            &table("a = 1\n[ssh]\nuser = \"x\"\n"),
            "deploy.toml",
            &mut origins,
        );
        record(
            &table("[ssh]\nuser = \"y\"\n"),
            "deploy/prod.toml",
            &mut origins,
        );
        assert_eq!(origins["a"], "deploy.toml");
        assert_eq!(origins["ssh.user"], "deploy/prod.toml");
    }
}
