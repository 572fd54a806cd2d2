//! README's "Ship it", run as a user runs it: its commands are read from README.md (so the two
//! cannot drift) and run with bash, in order, against three hosts that look like machines of
//! their own: each is a network namespace (its own port 22 and 8080) holding an sshd for the
//! `deploy` user, with its own `/srv` and its own `/etc/hosts`. The deploy machine's side runs in
//! a mount namespace where `app1.example.com`… resolve to those hosts and `~/.ssh`, the Nagios
//! plugin directory and `/etc/nagios4` are this test's. Then a real Nagios 4 core runs the
//! service the README defines against each host, and each host's heartbeat reaches the Riemann
//! sink as the README's settings name it.
//!
//! What a user's machine has and this one lacks is said once, here, as rewrites of the README's
//! text, each of which must apply: the build is the dev profile (`PROFILE=dev`, so
//! `target/release/` is `target/debug/`), and Riemann itself does not run here (its config is
//! checked to be in the release instead of copied to /etc/riemann). `$EDITOR deploy.toml`
//! changes nothing: the example's hosts, user and paths are the README's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use testbed::cores::{self, HostService};
use testbed::netns::Netns;
use testbed::riemann::Sink;
use testbed::sshd::Sshd;
use testbed::workspace_root;

/// The README's "Ship it" commands, rewritten as the module says.
fn ship_it_script() -> (String, String) {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let section = readme
        .split("\n## Ship it\n")
        .nth(1)
        .expect("README has a \"Ship it\" section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("a ```sh block in \"Ship it\"");
    let mut script = block.to_owned();
    for (from, to) in [
        ("target/release/deployer", "target/debug/deployer"),
        (
            "sudo cp dist/riemann/riemann.config /etc/riemann/riemann.config",
            "test -s dist/riemann/riemann.config",
        ),
    ] {
        assert_eq!(
            script.matches(from).count(),
            1,
            "README no longer says {from:?}"
        );
        script = script.replace(from, to);
    }
    (script, block.to_owned())
}

/// The Nagios service README defines (in comments): its `check_command` value.
fn nagios_check(block: &str) -> String {
    block
        .lines()
        .find_map(|l| {
            l.trim_start_matches(['#', ' '])
                .strip_prefix("check_command ")
        })
        .expect("README defines a Nagios service with a check_command")
        .trim()
        .to_owned()
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A directory that looks like a checkout to the README's commands: the Makefile, packaging/
/// and target/ are the workspace's; what the commands write (dist/, deploy.toml, the token,
/// each host's usersvc.toml) stays here. `cargo` runs in the workspace itself, so nothing is
/// built twice.
fn checkout(dir: &Path, bin: &Path) -> PathBuf {
    let root = workspace_root();
    let co = dir.join("checkout");
    std::fs::create_dir_all(&co).expect("mkdir");
    for entry in ["Makefile", "packaging", "target"] {
        std::os::unix::fs::symlink(root.join(entry), co.join(entry)).expect("link");
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    write_exec(
        &bin.join("cargo"),
        &format!(
            "#!/bin/sh\ncd '{}' && exec '{cargo}' \"$@\"\n",
            root.display()
        ),
    );
    // Root needs no sudo (and this machine has none): it runs the command.
    write_exec(&bin.join("sudo"), "#!/bin/sh\nexec \"$@\"\n");
    co
}

#[test]
fn ship_it_runs_as_written() {
    assert!(
        testbed::is_root(),
        "README's Ship it needs root here (network namespaces, mounts): run as make test does"
    );
    let (script, block) = ship_it_script();
    let sink = Sink::start();
    let names = ["app1", "app2", "app3"];
    let nets: Vec<Netns> = names.iter().map(|_| Netns::start()).collect();
    let mut hosts_file = String::from("127.0.0.1 localhost\n");
    for (n, ns) in names.iter().zip(&nets) {
        hosts_file.push_str(&format!("{} {n}.example.com\n", ns.inside_ip));
        // Each host reaches "riemann.internal" (the README's usersvc.toml) on its link.
        ns.set_hosts(&format!(
            "127.0.0.1 localhost\n{} riemann.internal\n",
            ns.outside_ip
        ));
        sink.listen_also(format!("{}:5555", ns.outside_ip).parse().expect("addr"));
    }
    let servers: Vec<Sshd> = nets
        .iter()
        .map(|ns| Sshd::start_host(ns, "deploy"))
        .collect();

    let work = tempfile::tempdir().expect("temp dir");
    let w = work.path();
    // Nagios runs its checks as the nagios user: what it reads must be reachable.
    std::fs::set_permissions(w, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = w.join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let co = checkout(w, &bin);
    let ssh = w.join("ssh");
    let plugins = w.join("plugins");
    let nagios = w.join("nagios4");
    for d in [&ssh, &plugins, &nagios.join("conf.d")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::copy(&servers[0].identity, ssh.join("id_ed25519")).expect("key");
    for s in &servers[1..] {
        std::fs::copy(
            servers[0].identity.with_extension("pub"),
            s.known_hosts.with_file_name("authorized_keys"),
        )
        .expect("authorize the key");
    }
    std::fs::write(w.join("hosts"), &hosts_file).expect("hosts");
    std::fs::write(w.join("ship-it.sh"), &script).expect("script");

    let out = run_script(w, &co, &bin, &ssh, &plugins, &nagios);
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "README's Ship it failed:\n{said}");
    assert!(said.contains("published"), "{said}");
    for (i, s) in servers.iter().enumerate() {
        // `current` is absolute (/srv/usersvc/releases/TS): /srv is the host's own only in there.
        let d = s.deploy_root.join("usersvc");
        let release = std::fs::read_link(d.join("current"))
            .ok()
            .and_then(|l| Some(l.file_name()?.to_owned()))
            .unwrap_or_else(|| panic!("{} has no current release:\n{said}", names[i]));
        assert!(
            d.join("releases")
                .join(release)
                .join("bin/usersvc")
                .is_file()
        );
    }

    // Step 5: Nagios, with the README's service and the files the README put in place.
    let check = nagios_check(&block).replace("/etc/nagios4/", &format!("{}/", nagios.display()));
    std::os::unix::fs::symlink(
        "/usr/lib/nagios/plugins/check_http",
        plugins.join("check_http"),
    )
    .expect("check_http (monitoring-plugins-basic)");
    let host_list: Vec<(&str, &str)> = names
        .iter()
        .zip(&nets)
        .map(|(n, ns)| (*n, ns.inside_ip.as_str()))
        .collect();
    let health = "check_usersvc_health!8080";
    let services: Vec<HostService> = names
        .iter()
        .flat_map(|n| {
            [
                HostService {
                    host: n,
                    name: "usersvc",
                    check: &check,
                },
                HostService {
                    host: n,
                    name: "usersvc health",
                    check: health,
                },
            ]
        })
        .collect();
    let cfg = nagios.join("conf.d/check_jsonrpc.cfg");
    let results = cores::nagios_hosts(&plugins, std::slice::from_ref(&cfg), &host_list, &services);
    for n in names {
        for service in ["usersvc", "usersvc health"] {
            let r = &results[&(n.to_owned(), service.to_owned())];
            assert_eq!(r.state, 0, "{n} {service}: {r:?}\n{check}");
        }
    }
    // The heartbeat of each host, under the name README's settings give it.
    for n in names {
        sink.wait_for(Duration::from_secs(20), |e| {
            e.host.as_deref() == Some(n) && e.service.as_deref() == Some("usersvc heartbeat")
        });
    }
    drop(servers);
}

/// Runs the script in the deploy machine's mount namespace (see the module), from `co`.
fn run_script(
    w: &Path,
    co: &Path,
    bin: &Path,
    ssh: &Path,
    plugins: &Path,
    nagios: &Path,
) -> std::process::Output {
    // ssh finds ~/.ssh through the password database, the deployer through $HOME: both are
    // set to the same home.
    let home = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| PathBuf::from("/root"), |u| u.dir);
    let dot_ssh = home.join(".ssh");
    let made = !dot_ssh.exists();
    if made {
        std::fs::create_dir(&dot_ssh).expect("a mount point for ~/.ssh");
    }
    let mounts = format!(
        "mount --bind '{}' /etc/hosts && mount --bind '{}' '{}' && mount --bind '{}' /usr/lib/nagios/plugins && mount --bind '{}' /etc/nagios4 && cd '{}' && exec bash -ex '{}'",
        w.join("hosts").display(),
        ssh.display(),
        dot_ssh.display(),
        plugins.display(),
        nagios.display(),
        co.display(),
        w.join("ship-it.sh").display()
    );
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = testbed::process::without_test_env(&mut Command::new("unshare"))
        .args(["--mount", "--propagation", "private", "sh", "-c", &mounts])
        .env("PATH", path)
        .env("HOME", &home)
        .env("PROFILE", "dev")
        .env("EDITOR", "true")
        .env("CARGO", bin.join("cargo"))
        .output()
        .expect("unshare (util-linux)");
    if made {
        let _ = std::fs::remove_dir(&dot_ssh);
    }
    out
}

/// The `sh` block that follows `heading` in README.md.
fn block_after(heading: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let section = readme
        .split(&format!("\n{heading}\n"))
        .nth(1)
        .unwrap_or_else(|| panic!("README has no {heading:?}"));
    section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .unwrap_or_else(|| panic!("no ```sh block under {heading:?}"))
        .to_owned()
}

/// Each command of a block (continuation lines joined) with the `# …` line after it: what
/// README says it prints.
fn commands_and_answers(block: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut command = String::new();
    for line in block.lines() {
        if let Some(answer) = line.strip_prefix("# ") {
            out.push((std::mem::take(&mut command), answer.to_owned()));
        } else {
            command.push_str(line.trim_end_matches('\\'));
            command.push(' ');
        }
    }
    out
}

/// Whether `text` is `pattern`, where `…` in the pattern stands for anything.
fn matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('…');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    for (i, p) in parts.iter().enumerate() {
        if i + 1 == parts.len() {
            return rest.ends_with(p);
        }
        match rest.find(p) {
            Some(at) => rest = &rest[at + p.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

/// `make run`, as the README's first command says, then the usersvc section's curl calls, each
/// answering what README says it prints. In a network namespace (its own port 8080) and a
/// directory of its own (`./usersvc.db` is made there).
#[test]
fn make_run_and_the_readme_curls_answer_as_it_says() {
    let two = block_after("## The two commands");
    assert!(two.lines().any(|l| l.starts_with("make run ")), "{two}");
    let calls = commands_and_answers(&block_after("## usersvc"));
    assert_eq!(calls.len(), 2, "README's usersvc calls: {calls:?}");
    let ns = Netns::start();
    let work = tempfile::tempdir().expect("temp dir");
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).expect("mkdir");
    let co = checkout(work.path(), &bin);
    // `cargo run` from here (./usersvc.db is made here), on the workspace's manifest.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    write_exec(
        &bin.join("cargo"),
        &format!(
            "#!/bin/bash\nsub=$1; shift; exec '{cargo}' \"$sub\" --manifest-path '{}' \"$@\"\n",
            workspace_root().join("Cargo.toml").display()
        ),
    );
    let mut run = ns.wrap(Command::new("make").arg("run"));
    testbed::process::without_test_env(&mut run);
    run.current_dir(&co).env("CARGO", bin.join("cargo"));
    let server = testbed::Peer::spawn("make run", run);
    let inside = |command: &str| {
        ns.wrap(Command::new("bash").arg("-c").arg(command))
            .current_dir(&co)
            .output()
            .expect("bash")
    };
    testbed::eventually("make run serves on :8080", Duration::from_secs(300), || {
        inside("curl -sf localhost:8080/health/live")
            .status
            .success()
    });
    for (command, answer) in &calls {
        let out = inside(command);
        let got = String::from_utf8_lossy(&out.stdout);
        assert!(
            matches(answer, got.trim_end()),
            "{command}\nREADME says: {answer}\nit printed:  {got}"
        );
    }
    assert!(
        co.join("usersvc.db").exists(),
        "./usersvc.db, as README says"
    );
    drop(server);
}
