//! Real monitoring cores running plugins: Nagios 4 and Icinga 2, each in the foreground with a
//! throwaway configuration in a temp dir. A test defines services (a check command line per
//! service), the core runs each check once, and the fixture returns what the core recorded.

use crate::process::{Peer, current_user, is_root, require};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// What a core recorded for one service.
#[derive(Debug, Clone, PartialEq)]
pub struct CoreResult {
    pub state: i64,
    pub output: String,
    pub long_output: String,
    pub perfdata: String,
}

/// Makes `dir` usable by the core's unprivileged user when we are root.
fn hand_over(dir: &Path, user: &str) {
    if is_root() && user != "root" {
        let status = Command::new("chown")
            .arg("-R")
            .arg(format!("{user}:"))
            .arg(dir)
            .status();
        assert!(
            matches!(status, Ok(s) if s.success()),
            "chown -R {user}: {} failed",
            dir.display()
        );
    }
}

/// One service: a name and the core's check command definition for it.
pub struct Service<'a> {
    pub name: &'a str,
    /// Nagios: the `check_command` value (`cmd!arg1!arg2`). Icinga 2: the object body lines.
    pub check: &'a str,
}

/// Nagios 4: runs every service once on host `localhost` (127.0.0.1); `includes` are extra
/// `cfg_file`s (command definitions); `$USER1$` is `plugin_dir`. Results by service name.
pub fn nagios(
    plugin_dir: &Path,
    includes: &[PathBuf],
    services: &[Service],
) -> HashMap<String, CoreResult> {
    let on_localhost: Vec<HostService> = services
        .iter()
        .map(|s| HostService {
            host: "localhost",
            name: s.name,
            check: s.check,
        })
        .collect();
    nagios_hosts(
        plugin_dir,
        includes,
        &[("localhost", "127.0.0.1")],
        &on_localhost,
    )
    .into_iter()
    .map(|((_, service), r)| (service, r))
    .collect()
}

/// A service on one of several hosts.
pub struct HostService<'a> {
    pub host: &'a str,
    pub name: &'a str,
    /// The `check_command` value (`cmd!arg1!arg2`); `$HOSTADDRESS$` is the host's address.
    pub check: &'a str,
}

/// Nagios 4 with several hosts (`(name, address)`): runs every service once. Results by
/// `(host, service)`.
pub fn nagios_hosts(
    plugin_dir: &Path,
    includes: &[PathBuf],
    hosts: &[(&str, &str)],
    services: &[HostService],
) -> HashMap<(String, String), CoreResult> {
    require("/usr/sbin/nagios4", "nagios4-core");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let d = dir.path();
    let user = if is_root() {
        "nagios".to_owned()
    } else {
        current_user()
    };
    std::fs::create_dir_all(d.join("checkresults")).unwrap_or_else(|e| panic!("mkdir: {e}"));
    let mut cfg = format!(
        "log_file={d}/nagios.log
cfg_file={d}/objects.cfg
resource_file={d}/resource.cfg
status_file={d}/status.dat
object_cache_file={d}/objects.cache
precached_object_file={d}/objects.precache
temp_file={d}/nagios.tmp
temp_path={d}
check_result_path={d}/checkresults
lock_file={d}/nagios.lock
state_retention_file={d}/retention.dat
retain_state_information=0
command_file={d}/nagios.cmd
check_external_commands=0
interval_length=1
service_inter_check_delay_method=n
host_inter_check_delay_method=n
max_service_check_spread=1
check_result_reaper_frequency=1
status_update_interval=1
execute_host_checks=0
enable_notifications=0
enable_flap_detection=0
nagios_user={user}
nagios_group={user}
",
        d = d.display()
    );
    for inc in includes {
        cfg.push_str(&format!("cfg_file={}\n", inc.display()));
    }
    let mut objects = String::from(
        "define timeperiod {
    timeperiod_name 24x7
    alias 24x7
    sunday 00:00-24:00
    monday 00:00-24:00
    tuesday 00:00-24:00
    wednesday 00:00-24:00
    thursday 00:00-24:00
    friday 00:00-24:00
    saturday 00:00-24:00
}
define contact {
    contact_name nobody
    host_notifications_enabled 0
    service_notifications_enabled 0
    host_notification_period 24x7
    service_notification_period 24x7
    host_notification_options n
    service_notification_options n
    host_notification_commands notify-none
    service_notification_commands notify-none
}
define command {
    command_name notify-none
    command_line /bin/true
}
",
    );
    for (name, address) in hosts {
        objects.push_str(&format!(
            "define host {{
    host_name {name}
    address {address}
    max_check_attempts 1
    check_period 24x7
    contacts nobody
    notification_period 24x7
}}
"
        ));
    }
    for s in services {
        objects.push_str(&format!(
            "define service {{
    host_name {}
    service_description {}
    check_command {}
    max_check_attempts 1
    check_interval 60
    retry_interval 60
    check_period 24x7
    contacts nobody
    notification_period 24x7
}}
",
            s.host, s.name, s.check
        ));
    }
    let write = |name: &str, text: &str| {
        std::fs::write(d.join(name), text).unwrap_or_else(|e| panic!("write {name}: {e}"));
    };
    write("nagios.cfg", &cfg);
    write("objects.cfg", &objects);
    write(
        "resource.cfg",
        &format!("$USER1$={}\n", plugin_dir.display()),
    );
    hand_over(d, &user);

    let verify = Command::new("/usr/sbin/nagios4")
        .arg("-v")
        .arg(d.join("nagios.cfg"))
        .output()
        .unwrap_or_else(|e| panic!("nagios4 -v: {e}"));
    assert!(
        verify.status.success(),
        "nagios4 rejected the configuration:\n{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let mut cmd = Command::new("/usr/sbin/nagios4");
    cmd.arg(d.join("nagios.cfg"));
    let mut core = Peer::spawn("nagios4", cmd);

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = std::fs::read_to_string(d.join("status.dat")).unwrap_or_default();
        let results = nagios_status(&status);
        if services
            .iter()
            .all(|s| results.contains_key(&(s.host.to_owned(), s.name.to_owned())))
        {
            core.kill();
            return results;
        }
        assert!(
            Instant::now() < deadline,
            "Nagios did not check every service within 60 s; log:\n{}\n{}",
            std::fs::read_to_string(d.join("nagios.log")).unwrap_or_default(),
            core.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Checked services from a `status.dat`, by `(host, service)`.
fn nagios_status(text: &str) -> HashMap<(String, String), CoreResult> {
    let mut out = HashMap::new();
    for block in text.split("servicestatus {").skip(1) {
        let body = block.split('}').next().unwrap_or("");
        let field = |key: &str| {
            body.lines()
                .map(str::trim_start)
                .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
                .unwrap_or("")
                .to_owned()
        };
        if field("has_been_checked") != "1" {
            continue;
        }
        out.insert(
            (field("host_name"), field("service_description")),
            CoreResult {
                state: field("current_state").parse().unwrap_or(-1),
                output: field("plugin_output"),
                // status.dat escapes newlines in long output as a literal \n.
                long_output: field("long_plugin_output").replace("\\n", "\n"),
                perfdata: field("performance_data"),
            },
        );
    }
    out
}

/// Icinga 2: runs every service once. `includes` are extra config files (CheckCommands);
/// `PluginDir` is `plugin_dir`. Each service's `check` is the body of its `object Service`.
pub fn icinga(
    plugin_dir: &Path,
    includes: &[PathBuf],
    services: &[Service],
) -> HashMap<String, CoreResult> {
    require("/usr/sbin/icinga2", "icinga2-bin icinga2-common");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let d = dir.path();
    let conf = icinga_config(d, plugin_dir, includes, services);
    let verify = icinga_daemon(d, &conf)
        .arg("-C")
        .output()
        .unwrap_or_else(|e| panic!("icinga2 -C: {e}"));
    assert!(
        verify.status.success(),
        "icinga2 rejected the configuration:\n{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let mut core = Peer::spawn("icinga2", icinga_daemon(d, &conf));
    wait_for_icinga_checks(d, services, &core);
    core.signal(libc::SIGTERM);
    assert!(
        core.wait_timeout(Duration::from_secs(30)).is_some(),
        "icinga2 did not stop:\n{}",
        core.log()
    );
    let state = std::fs::read(d.join("data/icinga2.state"))
        .unwrap_or_else(|e| panic!("icinga2.state: {e}"));
    icinga_state(&state)
}

/// Writes `icinga2.conf` in `d` (and the directories it names): the ITL, a checker, perfdata
/// lines naming each checked service, host `localhost` and `services` on it.
fn icinga_config(
    d: &Path,
    plugin_dir: &Path,
    includes: &[PathBuf],
    services: &[Service],
) -> PathBuf {
    for sub in [
        "data",
        "log",
        "cache",
        "spool",
        "run",
        "perfdata",
        "perfdata-spool",
    ] {
        std::fs::create_dir_all(d.join(sub)).unwrap_or_else(|e| panic!("mkdir {sub}: {e}"));
    }
    let mut conf = format!(
        "include <itl>
const PluginDir = \"{plugins}\"
object CheckerComponent \"checker\" {{ }}
object PerfdataWriter \"perfdata\" {{
  service_perfdata_path = \"{d}/perfdata/service\"
  host_perfdata_path = \"{d}/perfdata/host\"
  service_temp_path = \"{d}/perfdata-spool/service\"
  host_temp_path = \"{d}/perfdata-spool/host\"
  service_format_template = \"SERVICEDESC::$service.name$\\tSTATE::$service.state_id$\"
  rotation_interval = 1s
}}
object Host \"localhost\" {{
  address = \"127.0.0.1\"
  check_command = \"dummy\"
  enable_active_checks = false
}}
",
        plugins = plugin_dir.display(),
        d = d.display()
    );
    for inc in includes {
        conf.push_str(&format!("include \"{}\"\n", inc.display()));
    }
    for s in services {
        conf.push_str(&format!(
            "object Service \"{}\" {{
  host_name = \"localhost\"
  max_check_attempts = 1
  check_interval = 1s
  retry_interval = 1s
{}
}}
",
            s.name, s.check
        ));
    }
    let conf_path = d.join("icinga2.conf");
    std::fs::write(&conf_path, conf).unwrap_or_else(|e| panic!("write icinga2.conf: {e}"));
    conf_path
}

/// `icinga2 daemon` on `conf`, every path it keeps under `d`, as the current user.
fn icinga_daemon(d: &Path, conf: &Path) -> Command {
    let user = current_user();
    let mut cmd = Command::new("/usr/sbin/icinga2");
    cmd.arg("daemon").arg("-c").arg(conf);
    for (k, v) in [
        ("DataDir", "data"),
        ("LogDir", "log"),
        ("CacheDir", "cache"),
        ("SpoolDir", "spool"),
        ("InitRunDir", "run"),
        ("StatePath", "data/icinga2.state"),
        ("ModAttrPath", "data/modattr.conf"),
        ("ObjectsPath", "cache/icinga2.debug"),
        ("VarsPath", "cache/icinga2.vars"),
        ("PidPath", "run/icinga2.pid"),
    ] {
        cmd.arg(format!("-D{k}={}", d.join(v).display()));
    }
    cmd.arg(format!("-DRunAsUser={user}"))
        .arg(format!("-DRunAsGroup={user}"));
    cmd
}

/// Waits until the perfdata lines say every service was checked (the full results come from
/// the state file Icinga writes when it stops).
fn wait_for_icinga_checks(d: &Path, services: &[Service], core: &Peer) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut seen = String::new();
        if let Ok(entries) = std::fs::read_dir(d.join("perfdata")) {
            for e in entries.flatten() {
                seen.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        if services
            .iter()
            .all(|s| seen.contains(&format!("SERVICEDESC::{}\t", s.name)))
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Icinga 2 did not check every service within 60 s:\n{}",
            core.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Services' last check results from an `icinga2.state` file (netstring-framed JSON objects).
fn icinga_state(mut bytes: &[u8]) -> HashMap<String, CoreResult> {
    let mut out = HashMap::new();
    while let Some(colon) = bytes.iter().position(|&b| b == b':') {
        let Some(len) = std::str::from_utf8(&bytes[..colon])
            .ok()
            .and_then(|s| s.parse::<usize>().ok())
        else {
            break;
        };
        let Some(payload) = bytes.get(colon + 1..colon + 1 + len) else {
            break;
        };
        bytes = bytes.get(colon + 2 + len..).unwrap_or(&[]);
        let Ok(obj) = serde_json::from_slice::<serde_json::Value>(payload) else {
            continue;
        };
        if obj["type"] != "Service" {
            continue;
        }
        let cr = &obj["update"]["last_check_result"];
        if cr.is_null() {
            continue;
        }
        let name = obj["name"]
            .as_str()
            .unwrap_or("")
            .rsplit('!')
            .next()
            .unwrap_or("")
            .to_owned();
        let full = cr["output"].as_str().unwrap_or("").to_owned();
        let (output, long_output) = match full.split_once('\n') {
            Some((first, rest)) => (first.to_owned(), rest.to_owned()),
            None => (full, String::new()),
        };
        let perfdata = cr["performance_data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.insert(
            name,
            CoreResult {
                state: cr["state"].as_f64().map_or(-1, |s| s as i64),
                output,
                long_output,
                perfdata,
            },
        );
    }
    out
}
