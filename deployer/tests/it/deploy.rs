//! `deployer deploy`, `releases`, `rollback`, `cleanup` against real sshd servers.

use crate::common;

use common::Hosts;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use testbed::netns::Netns;
use testbed::sshd::Sshd;

#[test]
fn deploys_incrementally_rolls_back_and_cleans_up() {
    let mut h = Hosts::start(&[5, 6]);
    h.awkward_deploy_dirs();
    h.configure(
        "keep_releases = 2\nshared_dirs = [\"data\"]\nshared_files = [{ path = \"config.toml\", seed = true }]",
        "[hooks]\nafter_publish = [\"echo \\\"$RELEASE\\\" >> \\\"$DEPLOY_TO/restarts\\\"\"]\n",
    );
    for i in 0..50 {
        h.write(
            &format!("lib/file{i}.txt"),
            &format!("content {i}\n").repeat(100),
        );
    }
    h.write("bin/app", "#!/bin/sh\necho v1\n");
    h.write("gone.txt", "removed in the second release");
    h.write("config.toml", "seed = true\n");
    std::os::unix::fs::symlink("bin/app", h.source.join("run")).expect("symlink");

    // First deploy: everything is sent.
    let r = h.deploy_ok();
    assert!(r.stdout.contains("53 files"), "{r}");
    let first = h.current(0).expect("current on host 0");
    assert_eq!(
        std::fs::read_link(h.deploy_to(0).join("current")).expect("link"),
        h.deploy_to(0).join("releases").join(&first),
        "current -> <deploy_to>/releases/<ts>, absolute as Capistrano writes it"
    );
    assert_eq!(h.current(1).as_deref(), Some(first.as_str()));
    for i in 0..2 {
        let cur = h.deploy_to(i).join("current");
        assert_eq!(
            std::fs::read_to_string(cur.join("lib/file7.txt")).expect("file"),
            "content 7\n".repeat(100)
        );
        assert_eq!(
            std::fs::read_link(cur.join("run")).expect("link").to_str(),
            Some("bin/app")
        );
        // Shared: links into shared/, seeded from the release the first time.
        let shared = h.deploy_to(i).join("shared");
        assert_eq!(
            std::fs::read_link(cur.join("config.toml")).expect("shared file link"),
            shared.join("config.toml")
        );
        assert_eq!(
            std::fs::read_to_string(cur.join("config.toml")).expect("seed"),
            "seed = true\n"
        );
        assert!(
            std::fs::read_link(cur.join("data")).expect("shared dir link") == shared.join("data")
        );
        assert!(shared.join("data").is_dir());
        assert!(
            !std::fs::read_to_string(cur.join("REVISION"))
                .expect("REVISION")
                .trim()
                .is_empty()
        );
        assert!(!h.locked(i));
        let log = h.log(i);
        assert_eq!(log.len(), 1);
        assert_eq!(log[0]["release"], first.as_str());
        assert_eq!(log[0]["outcome"], "deployed");
        for key in ["revision", "user", "time"] {
            assert!(log[0][key].is_string(), "{key} in {}", log[0]);
        }
    }
    // Data written to shared/ survives releases.
    std::fs::write(h.deploy_to(0).join("shared/data/users.db"), "precious").expect("write");

    // Second deploy: one file changed, one added, one removed → those two are sent, plus the
    // shared file's seed (shared paths are never linked: on the host they point into shared/).
    h.write("bin/app", "#!/bin/sh\necho v2\n");
    h.write("new.txt", "new");
    std::fs::remove_file(h.source.join("gone.txt")).expect("rm");
    let r = h.deploy_ok();
    let second = h.current(0).expect("current");
    assert_ne!(second, first);
    for i in 0..2 {
        let row = r
            .stdout
            .lines()
            .find(|l| l.starts_with(&h.servers[i].addr))
            .expect("row");
        assert!(
            row.contains(" 3 files") && row.contains(" 50 files"),
            "sent 3, linked 50:\n{r}"
        );
        let cur = h.deploy_to(i).join("current");
        assert_eq!(
            std::fs::read_to_string(cur.join("bin/app")).expect("app"),
            "#!/bin/sh\necho v2\n"
        );
        assert!(!cur.join("gone.txt").exists());
        // Unchanged files are hard links to the previous release's: same inode.
        let old = h
            .deploy_to(i)
            .join("releases")
            .join(&first)
            .join("lib/file3.txt");
        let new = cur.join("lib/file3.txt");
        assert_eq!(
            std::fs::metadata(&old).expect("old").ino(),
            std::fs::metadata(&new).expect("new").ino()
        );
        // Executable bits kept.
        assert_eq!(
            std::fs::metadata(cur.join("bin/app")).expect("app").mode() & 0o111,
            0o111
                & std::fs::metadata(h.source.join("bin/app"))
                    .expect("src")
                    .mode()
        );
    }
    assert_eq!(
        std::fs::read_to_string(h.deploy_to(0).join("current/data/users.db")).expect("shared"),
        "precious"
    );

    // Third deploy with keep_releases = 2: the first release goes.
    h.write("new.txt", "newer");
    h.deploy_ok();
    let third = h.current(0).expect("current");
    assert_eq!(h.releases(0), [second.clone(), third.clone()]);
    assert_eq!(h.releases(1), [second.clone(), third.clone()]);

    // releases: a table per host, current marked.
    let r = h.run(&["releases"]);
    assert_eq!(r.code, 0, "{r}");
    for s in &h.servers {
        assert!(r.stdout.contains(&s.addr), "{r}");
    }
    let cur_line = r.stdout.lines().find(|l| l.contains(&third)).expect("row");
    assert!(
        cur_line.contains("current") && cur_line.trim_start().starts_with('*'),
        "{r}"
    );
    assert!(
        !r.stdout
            .lines()
            .find(|l| l.contains(&second))
            .expect("row")
            .contains("current")
    );

    // rollback: back to the previous release, hooks run there, logged.
    let r = h.run(&["rollback"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(h.current(0).as_deref(), Some(second.as_str()));
    assert_eq!(h.current(1).as_deref(), Some(second.as_str()));
    let restarts = std::fs::read_to_string(h.deploy_to(1).join("restarts")).expect("restarts");
    assert_eq!(
        restarts.lines().collect::<Vec<_>>(),
        [&first, &second, &third, &second]
    );
    let log = h.log(1);
    let last = log.last().expect("log");
    assert_eq!(last["outcome"], "rollback");
    assert_eq!(last["release"], second.as_str());
    assert_eq!(last["from"], third.as_str());
    // Nothing older to go to.
    let r = h.run(&["rollback"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("no older good release"), "{r}");
    assert!(!h.locked(0) && !h.locked(1));

    // rollback --to: any complete release; an unknown one is refused before anything moves.
    let r = h.run(&["rollback", "--to", "19990101000000"]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(h.current(0).as_deref(), Some(second.as_str()));
    let r = h.run(&["rollback", "--to", &third]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(h.current(0).as_deref(), Some(third.as_str()));
    assert_eq!(h.current(1).as_deref(), Some(third.as_str()));

    // cleanup with keep_releases = 1: only current is left.
    h.configure(
        "keep_releases = 1\nshared_dirs = [\"data\"]\nshared_files = [{ path = \"config.toml\", seed = true }]",
        "",
    );
    let r = h.run(&["cleanup", "--dry-run"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains(&format!("would remove {second}")), "{r}");
    assert_eq!(h.releases(0).len(), 2);
    let r = h.run(&["cleanup"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(h.releases(0), std::slice::from_ref(&third));
    assert_eq!(h.releases(1), [third]);
}

#[test]
fn an_incremental_deploy_is_one_connection_and_four_commands_per_host() {
    let h = Hosts::start(&[52, 53]);
    h.write("bin/app", "v1\n");
    h.write("lib/data", "unchanged\n");
    h.deploy_ok();
    h.write("bin/app", "v2\n");
    let r = h.run(&["-v", "deploy"]);
    assert_eq!(r.code, 0, "{r}");
    // Lock and read the state; upload and link the shared files; publish; clean up and unlock.
    assert!(
        r.stdout
            .contains("ssh: 2 connections and 8 remote commands for 2 hosts (4.0 per host)"),
        "{r}"
    );
    assert_eq!(
        std::fs::read_to_string(h.deploy_to(1).join("current/bin/app")).expect("app"),
        "v2\n"
    );
}

#[test]
fn a_task_or_a_rollback_on_a_host_never_deployed_leaves_nothing_there() {
    let h = Hosts::start(&[60]);
    h.configure("", "[tasks.migrate]\ncommand = \"true\"\n");
    h.write("bin/app", "v1\n");
    for args in [&["run", "migrate"][..], &["rollback"], &["cleanup"]] {
        let r = h.run(args);
        assert_ne!(r.code, 0, "{args:?}: {r}");
        assert!(r.stdout.contains("nothing deployed in"), "{args:?}: {r}");
        assert!(
            !h.deploy_to(0).exists(),
            "{args:?} made {}",
            h.deploy_to(0).display()
        );
    }
    // A deploy makes the layout, and the task then runs in it.
    h.deploy_ok();
    let r = h.run(&["run", "migrate"]);
    assert_eq!(r.code, 0, "{r}");
}

#[test]
fn dry_run_reads_but_changes_nothing() {
    let h = Hosts::start(&[7]);
    h.write("a.txt", "a");
    let r = h.run(&["deploy", "--dry-run"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains("dry run") && r.stdout.contains("1 files"),
        "{r}"
    );
    assert!(
        !h.deploy_to(0).exists(),
        "dry run created {}",
        h.deploy_to(0).display()
    );
    h.deploy_ok();
    let r = h.run(&["deploy", "--dry-run"]);
    assert!(
        r.stdout.contains("0 files, 0 B") && r.stdout.contains("ready"),
        "{r}"
    );
}

#[test]
fn a_non_root_deploy_user_works() {
    // As root the test logs in as a fresh `deploy` user; otherwise the test user is not root.
    let user = if testbed::process::is_root() {
        "deploy".to_owned()
    } else {
        testbed::process::current_user()
    };
    let h = Hosts::start_as(&[21], &user);
    h.write("bin/app", "#!/bin/sh\n");
    h.write("etc/app.toml", "x = 1\n");
    h.configure(
        "shared_files = [{ path = \"etc/app.toml\", seed = true }]",
        "",
    );
    let r = h.deploy_ok();
    assert!(r.stdout.contains("published"), "{r}");
    let uid = std::process::Command::new("id")
        .args(["-u", &user])
        .output()
        .expect("id");
    let uid: u32 = String::from_utf8_lossy(&uid.stdout)
        .trim()
        .parse()
        .expect("uid");
    let cur = h.deploy_to(0).join("current");
    for p in [
        "bin/app",
        "REVISION",
        "../../shared/etc/app.toml",
        "../../.deploy/manifests",
    ] {
        let meta = std::fs::metadata(cur.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert_eq!(meta.uid(), uid, "{p} is owned by {user}");
    }
    assert_eq!(h.log(0)[0]["user"], user.as_str());

    // A deploy_to that does not exist where this user cannot make it: `check` says so, and
    // where, rather than "not writable".
    let closed = h.servers[0].deploy_root.join("closed");
    std::fs::create_dir(&closed).expect("mkdir");
    std::fs::set_permissions(&closed, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let text = std::fs::read_to_string(&h.config).expect("config");
    let moved = text.replace(
        &h.deploy_to(0).display().to_string(),
        &closed.join("app").display().to_string(),
    );
    std::fs::write(&h.config, moved).expect("config");
    let r = h.run(&["check"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains(&format!(
            "{}/app does not exist, and this user cannot create it in {}",
            closed.display(),
            closed.display()
        )),
        "{r}"
    );
}

#[test]
fn deploy_events_reach_riemann() {
    let sink = testbed::riemann::Sink::start();
    let h = Hosts::start(&[22]);
    h.configure(
        "",
        &format!("[riemann]\nserver = \"{}\"\n", sink.tcp_addr()),
    );
    h.write("a", "1");
    h.deploy_ok();
    let release = h.current(0).expect("current");
    let attr = |e: &riemann_probe::Event, k: &str| {
        e.attributes
            .iter()
            .find(|a| a.key == k)
            .and_then(|a| a.value.clone())
    };
    let ok = sink.wait_for(std::time::Duration::from_secs(10), |e| {
        e.service.as_deref() == Some("deployer deploy")
    });
    assert_eq!(ok.state.as_deref(), Some("ok"));
    assert_eq!(ok.host.as_deref(), Some(h.servers[0].ip.as_str()));
    assert_eq!(attr(&ok, "release").as_deref(), Some(release.as_str()));
    assert_eq!(attr(&ok, "application").as_deref(), Some("usersvc"));
    // A failed deploy is critical and names the stage.
    h.configure(
        "",
        &format!(
            "[hooks]\nbefore_publish = [\"false\"]\n[riemann]\nserver = \"{}\"\n",
            sink.tcp_addr()
        ),
    );
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    let bad = sink.wait_for(std::time::Duration::from_secs(10), |e| {
        e.state.as_deref() == Some("critical")
    });
    assert_eq!(attr(&bad, "stage").as_deref(), Some("before_publish"));
    // Riemann being down never fails a deploy.
    sink.down();
    h.configure("", "[riemann]\nserver = \"127.0.0.1:1\"\n");
    let r = h.deploy_ok();
    assert!(r.stderr.contains("could not send deploy events"), "{r}");
}

#[test]
fn help_teaches_the_commands_and_the_config() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deployer"))
        .arg("--help")
        .output()
        .expect("deployer --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    // The defaults the help states are the ones the config takes (written once, in config.rs).
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("deploy.toml");
    std::fs::write(
        &path,
        "application = \"a\"\ndeploy_to = \"/srv/a\"\nsource = \"d\"\n[[hosts]]\naddress = \"h\"\n[health]\ncommand = \"true\"\n",
    )
    .expect("deploy.toml");
    let cfg = deployer::Config::load(&path).expect("loads");
    let health = cfg.health.clone().expect("[health]");
    let d = |t: std::time::Duration| humantime::format_duration(t).to_string();
    for stated in [
        format!("keep_releases ({})", cfg.keep_releases),
        format!("retries ({})", health.retries),
        format!("interval ({})", d(health.interval)),
        format!("timeout ({})", d(health.timeout)),
        format!("max_error_ratio ({})", cfg.canary.max_error_ratio),
        format!("max_latency_ratio ({})", cfg.canary.max_latency_ratio),
        format!("min_error_rate ({}/s)", cfg.canary.min_error_rate),
        format!("(5ms), interval ({})", d(cfg.canary.interval)),
        format!("default: {}]", deployer::Settings::PARALLEL),
    ] {
        assert!(help.contains(&stated), "--help states {stated:?}? \n{help}");
    }
    assert_eq!(d(cfg.canary.min_latency), "5ms");
    for word in [
        "deploy",
        "rollback",
        "releases",
        "cleanup",
        "check",
        "unlock",
        "--dry-run",
        "--hosts",
        "--role",
        "--parallel",
        "keep_releases",
        "shared_dirs",
        "[health]",
        "known_hosts",
        "--accept-new-host-keys",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deployer"))
        .args(["-c", "/nonexistent/deploy.toml", "releases"])
        .output()
        .expect("deployer");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/deploy.toml"));
}

#[test]
fn authenticates_with_the_ssh_agent_when_no_identity_is_set() {
    let h = Hosts::start(&[23]);
    h.write("a", "1");
    let text = std::fs::read_to_string(&h.config).expect("config");
    let no_identity: String = text
        .lines()
        .filter(|l| !l.starts_with("identity ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&h.config, no_identity).expect("config");
    let sock = h.dir.path().join("agent.sock");
    let mut cmd = std::process::Command::new("ssh-agent");
    cmd.arg("-D").arg("-a").arg(&sock);
    let _agent = testbed::process::Peer::spawn("ssh-agent", cmd);
    testbed::process::eventually(
        "the agent listens",
        std::time::Duration::from_secs(10),
        || sock.exists(),
    );
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_deployer"))
            .arg("-c")
            .arg(&h.config)
            .args(args)
            .env("SSH_AUTH_SOCK", &sock)
            .envs(common::homes(&h.config))
            .output()
            .expect("deployer")
    };
    // The agent holds no key yet: authentication fails, and says so.
    let out = run(&["check"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("authentication"),
        "{out:?}"
    );
    testbed::process::checked(
        "ssh-add",
        std::process::Command::new("ssh-add")
            .arg(&h.servers[0].identity)
            .env("SSH_AUTH_SOCK", &sock)
            .output(),
    );
    let out = run(&["deploy"]);
    assert!(out.status.success(), "{out:?}");
    assert!(h.current(0).is_some());
}

#[test]
fn the_build_command_runs_first_and_a_failing_one_stops_everything() {
    let h = Hosts::start(&[26]);
    // Run in the config file's directory, before anything is read or sent.
    h.configure("build = \"mkdir -p dist/gen && date > dist/gen/built\"", "");
    h.deploy_ok();
    assert!(h.deploy_to(0).join("current/gen/built").is_file());
    let first = h.current(0).expect("current");
    h.configure("build = \"echo compile error >&2; exit 3\"", "");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("build") && r.stderr.contains("compile error"),
        "{r}"
    );
    assert_eq!(h.current(0), Some(first.clone()));
    assert_eq!(h.releases(0), [first]);
    assert!(!h.locked(0));
}

#[test]
fn a_once_hook_runs_on_the_first_host_only() {
    let h = Hosts::start(&[38, 39, 40]);
    h.configure(
        "",
        "[hooks]\nbefore_publish = [{ command = 'touch \"$DEPLOY_TO/shared/migrated\"', once = true }, 'touch \"$DEPLOY_TO/shared/every\"']\n\
         after_publish = [{ command = 'touch \"$DEPLOY_TO/shared/announced\"', once = true }]\n",
    );
    h.write("v", "1");
    let plan = h.run(&["deploy", "--dry-run"]);
    assert!(plan.stdout.contains("(once, on the first host)"), "{plan}");
    h.deploy_ok();
    let has = |i: usize, f: &str| h.deploy_to(i).join("shared").join(f).exists();
    assert_eq!(
        (0..3).map(|i| has(i, "migrated")).collect::<Vec<_>>(),
        [true, false, false],
        "the once hook ran on exactly the first host"
    );
    assert_eq!(
        (0..3).map(|i| has(i, "announced")).collect::<Vec<_>>(),
        [true, false, false]
    );
    assert!(
        (0..3).all(|i| has(i, "every")),
        "plain hooks run everywhere"
    );
}

#[test]
fn exec_runs_on_every_host_prefixed_and_names_the_ones_that_failed() {
    let h = Hosts::start(&[41, 42, 43]);
    h.configure("", "");
    for i in 0..3 {
        std::fs::create_dir_all(h.deploy_to(i)).expect("deploy_to");
    }
    std::fs::write(h.deploy_to(1).join("fail"), "").expect("marker");
    let r = h.run(&[
        "exec",
        "--",
        "sh",
        "-c",
        "echo \"in $(basename \"$PWD\")\"; [ ! -e fail ]",
    ]);
    assert_eq!(r.code, 1, "{r}");
    let names: Vec<String> = (0..3).map(|i| h.servers[i].addr.to_string()).collect();
    for (i, name) in names.iter().enumerate() {
        let dir = h
            .deploy_to(i)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_owned();
        assert!(
            r.stdout.contains(&format!("{name}: in {dir}")),
            "{name}: {r}"
        );
    }
    assert!(r.stdout.contains(&format!("{}: exit 1", names[1])), "{r}");
    assert!(
        r.stderr.contains("the command failed or could not run on") && r.stderr.contains(&names[1]),
        "{r}"
    );
    assert!(
        !r.stderr.contains(&names[0]) && !r.stderr.contains(&names[2]),
        "{r}"
    );
    // In the current release once there is one; --group puts output under each host.
    h.write("v", "1");
    h.deploy_ok();
    let r = h.run(&["exec", "--group", "--hosts", &names[0], "--", "cat", "v"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains(&format!("== {} (exit 0)\n1", names[0])),
        "{r}"
    );
    // One argument is a shell command line, as `ssh host 'cmd'` takes it; several stay words.
    let r = h.run(&["exec", "--hosts", &names[0], "--", "echo one; cat v"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout
            .contains(&format!("{}: one\n{}: 1", names[0], names[0])),
        "{r}"
    );
    let r = h.run(&["exec", "--hosts", &names[0], "--", "echo", "a; b"]);
    assert!(r.stdout.contains(&format!("{}: a; b", names[0])), "{r}");
}

#[test]
fn logs_shows_the_last_lines_of_each_host_s_log_prefixed() {
    let h = Hosts::start(&[44, 45]);
    h.configure("", "");
    let names: Vec<String> = (0..2).map(|i| h.servers[i].addr.to_string()).collect();
    for i in 0..2 {
        let shared = h.deploy_to(i).join("shared");
        std::fs::create_dir_all(&shared).expect("shared");
        let lines: String = (1..=10).map(|n| format!("host{i} line {n}\n")).collect();
        std::fs::write(shared.join("usersvc.log"), lines).expect("log");
    }
    let r = h.run(&["logs", "-n", "3"]);
    assert_eq!(r.code, 0, "{r}");
    for (i, name) in names.iter().enumerate() {
        for n in 8..=10 {
            assert!(
                r.stdout.contains(&format!("{name}: host{i} line {n}")),
                "{r}"
            );
        }
        assert!(!r.stdout.contains(&format!("host{i} line 7")), "{r}");
    }
    // -f: the last lines, then new ones from every host as they are written, until Ctrl-C;
    // nothing is left running on the hosts.
    let mut follow = common::spawn_deployer(&h.config, &["logs", "-n", "1", "-f"]);
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().expect("stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = Vec::new();
    let mut wait_for = |want: String| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !seen.contains(&want) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("never printed {want:?}; printed {seen:?}"),
            }
        }
    };
    wait_for(format!("{}: host0 line 10", names[0]));
    wait_for(format!("{}: host1 line 10", names[1]));
    for (i, name) in names.iter().enumerate() {
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(h.deploy_to(i).join("shared/usersvc.log"))
            .expect("open log");
        std::io::Write::write_all(&mut f, format!("host{i} new line\n").as_bytes())
            .expect("append");
        wait_for(format!("{name}: host{i} new line"));
    }
    let log = h.deploy_to(0).join("shared/usersvc.log");
    let tails = || {
        std::process::Command::new("pgrep")
            .arg("-f")
            .arg(format!("tail -n 1 -F -- {}", log.display()))
            .status()
            .is_ok_and(|s| s.success())
    };
    assert!(tails(), "the remote tail runs while following");
    let ctrl_c = std::process::Command::new("kill")
        .args(["-INT", &follow.id().to_string()])
        .status()
        .expect("kill");
    assert!(ctrl_c.success());
    let status = follow.wait().expect("deployer ends");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends a follow normally");
    testbed::eventually(
        "the remote tails end",
        std::time::Duration::from_secs(10),
        || !tails(),
    );
    // A host without the log fails, named.
    std::fs::remove_file(h.deploy_to(1).join("shared/usersvc.log")).expect("rm");
    let r = h.run(&["logs", "-n", "1"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains(&names[1]), "{r}");
}

#[test]
fn local_hooks_see_the_outcome_and_a_failing_local_before_touches_no_host() {
    let h = Hosts::start(&[46]);
    let log = h.dir.path().join("local.log");
    let record = |what: &str| {
        format!(
            "'echo {what} \"$DEPLOY_RELEASE $DEPLOY_REVISION $DEPLOY_HOSTS [$DEPLOY_OUTCOME]\" >> \"{}\"'",
            log.display()
        )
    };
    let hooks = |before: &str| {
        format!(
            "[hooks]\nlocal_before = [{before}]\nbefore_publish = ['echo remote says hello on \"$RELEASE\"']\n\
             local_failed = [{}]\nlocal_after = [{}, 'echo after-output; exit 4']\n",
            record("failed"),
            record("after")
        )
    };
    h.configure("", &hooks(&record("before")));
    h.write("v", "1");
    let r = h.run(&["-v", "deploy", "--revision", "rev1"]);
    // local_after's own failure is a warning: the release is live, the exit status says so.
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("is live, but see the warnings"), "{r}");
    let release = h.current(0).expect("published");
    let host = &h.servers[0].addr;
    assert_eq!(
        std::fs::read_to_string(&log).expect("the local hooks wrote"),
        format!("before {release} rev1 {host} []\nafter {release} rev1 {host} [ok]\n"),
        "local_before sees the release to come, local_after the outcome; local_failed did not run"
    );
    // -v: every hook's output in the report's log, remote and local.
    assert!(
        r.stdout.contains(&format!("== before_publish on {host}"))
            && r.stdout
                .contains(&format!("remote says hello on {release}")),
        "{r}"
    );
    assert!(
        r.stdout.contains("== local_after on this machine") && r.stdout.contains("after-output"),
        "{r}"
    );
    assert!(
        r.stdout.contains("warning: deploy: the local_after hook"),
        "{r}"
    );
    // Without -v, a successful hook's output is not printed.
    std::fs::remove_file(&log).expect("rm");
    h.configure("", &hooks("'echo checking; exit 5'"));
    h.write("v", "2");
    let r = h.run(&["deploy", "--revision", "rev2"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("local_before hook") && r.stderr.contains("exited 5: checking"),
        "{r}"
    );
    assert!(r.stdout.contains("not started"), "{r}");
    assert!(!r.stdout.contains("remote says hello"), "{r}");
    assert_eq!(h.current(0), Some(release.clone()), "nothing sent");
    assert_eq!(h.releases(0), [release]);
    assert!(!h.locked(0));
    let seen = std::fs::read_to_string(&log).expect("the local hooks wrote");
    assert!(
        seen.starts_with("failed ") && seen.contains(" rev2 ") && seen.ends_with("[failed]\n"),
        "local_failed and local_after see the failure:\n{seen}"
    );
}

// Hosts on a private network reached only through a bastion (OpenSSH's ProxyJump), tunnelled
// by the deployer through the bastion's direct-tcpip channel: a real sshd for each, in a
// network namespace, the hosts accepting the deployer's key only from the bastion's address.

/// Edits `[ssh]` of the written deploy.toml: `lines` go right under the heading.
fn with_ssh(h: &Hosts, lines: &str) {
    let text = std::fs::read_to_string(&h.config).expect("deploy.toml");
    let text = text.replacen("[ssh]\n", &format!("[ssh]\n{lines}\n"), 1);
    std::fs::write(&h.config, text).expect("deploy.toml");
}

/// `n` hosts in `ns` that take the deployer's key only from the bastion's address, and the
/// bastion, which takes it from anywhere; known_hosts has all their keys. Also returns the key
/// and known_hosts without the bastion's line.
fn behind_a_bastion(ns: &Netns, n: u16) -> (Sshd, Hosts, String, String) {
    let bastion = Sshd::start_in(ns, 2200);
    let h = Hosts::with_servers((1..=n).map(|i| Sshd::start_in(ns, 2200 + i)).collect());
    let key = std::fs::read_to_string(h.servers[0].identity.with_extension("pub")).expect("key");
    for s in &h.servers {
        let only_from_bastion = format!("from=\"{}\" {key}", ns.inside_ip);
        std::fs::write(
            s.known_hosts.with_file_name("authorized_keys"),
            only_from_bastion,
        )
        .expect("authorized_keys");
    }
    std::fs::write(bastion.known_hosts.with_file_name("authorized_keys"), &key).expect("auth");
    let known = h.dir.path().join("known_hosts");
    let hosts_only = std::fs::read_to_string(&known).expect("known_hosts");
    let bastion_key = std::fs::read_to_string(&bastion.known_hosts).expect("bastion key");
    std::fs::write(&known, format!("{hosts_only}{bastion_key}")).expect("known_hosts");
    (bastion, h, key, hosts_only)
}

#[test]
fn deploys_through_a_bastion_from_config_and_from_ssh_config() {
    let ns = Netns::start();
    let (bastion, h, key, hosts_only) = behind_a_bastion(&ns, 2);
    let known = h.dir.path().join("known_hosts");
    let bastion_key = std::fs::read_to_string(&bastion.known_hosts).expect("bastion key");
    h.write("bin/app", "v1\n");
    // 4 MiB that do not compress: the tunnel's flow control (the channel window, a full socket
    // buffer) is exercised, not only a few small packets.
    let noise = common::noise(0x9E37_79B9_7F4A_7C15, 4 << 20);
    std::fs::write(h.source.join("blob"), &noise).expect("blob");

    // Straight to the hosts: refused, as the network wants.
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("authentication"), "{r}");
    assert_eq!(h.current(0), None);

    // Through the bastion: deployed, and exec goes the same way.
    let jump = format!("{}@{}", bastion.user, bastion.addr);
    with_ssh(&h, &format!("proxy_jump = \"{jump}\""));
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 0, "{r}");
    // Both hosts' connections ride one session to the bastion.
    assert_eq!(bastion.logins(), 1, "{}", bastion.log());
    let first = h.current(0).expect("deployed through the bastion");
    assert_eq!(h.current(1).as_deref(), Some(first.as_str()));
    for i in 0..2 {
        let got = std::fs::read(h.deploy_to(i).join("current/blob")).expect("blob");
        assert!(
            got == noise,
            "host {i}: the 4 MiB arrived intact through the tunnel"
        );
    }
    let r = h.run(&["exec", "--", "cat", "bin/app"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains(&format!("{}: v1", h.servers[1].addr)),
        "{r}"
    );

    // A host behind the bastion that is down fails alone: the session to the bastion goes on
    // carrying the others' tunnels.
    let with_dead = h.dir.path().join("with-a-dead-host.toml");
    let text = std::fs::read_to_string(&h.config).expect("deploy.toml");
    let dead = format!("{}:2299", ns.inside_ip);
    std::fs::write(
        &with_dead,
        format!("{text}\n[[hosts]]\naddress = \"{dead}\"\ndeploy_to = \"/srv/none\"\n"),
    )
    .expect("deploy.toml");
    let r = common::deployer(&with_dead, &["exec", "--", "cat", "bin/app"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout
            .contains(&format!("could not open a connection to {dead}")),
        "{r}"
    );
    for s in &h.servers {
        assert!(r.stdout.contains(&format!("{}: v1", s.addr)), "{r}");
    }
    assert_eq!(bastion.logins(), 3, "{}", bastion.log());

    // A chain of two jump hosts, as OpenSSH writes it: the second reached through the first.
    let inner = Sshd::start_in(&ns, 2203);
    std::fs::write(inner.known_hosts.with_file_name("authorized_keys"), &key).expect("auth");
    let inner_key = std::fs::read_to_string(&inner.known_hosts).expect("inner key");
    std::fs::write(&known, format!("{hosts_only}{bastion_key}{inner_key}")).expect("known_hosts");
    let text = std::fs::read_to_string(&h.config).expect("deploy.toml");
    let chain = format!("{jump},{}@{}", inner.user, inner.addr);
    std::fs::write(&h.config, text.replace(&jump, &chain)).expect("deploy.toml");
    let r = h.run(&["exec", "--", "cat", "bin/app"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        inner.logins(),
        1,
        "one session to the second hop: {}",
        inner.log()
    );
    // The second hop is really taken: its key unknown, the chain stops there.
    std::fs::write(&known, format!("{hosts_only}{bastion_key}")).expect("known_hosts");
    let r = h.run(&["exec", "--", "true"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout
            .contains(&format!("jump host {}@{}", inner.user, inner.addr)),
        "{r}"
    );
    std::fs::write(&h.config, text).expect("deploy.toml");
    drop(inner);

    // An unknown bastion key is refused, with its fingerprint; nothing changes.
    std::fs::write(&known, &hosts_only).expect("known_hosts");
    h.write("bin/app", "v2\n");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    let fingerprint = String::from_utf8_lossy(
        &std::process::Command::new("ssh-keygen")
            .arg("-lf")
            .arg(&bastion.known_hosts)
            .output()
            .expect("ssh-keygen -l")
            .stdout,
    )
    .split_whitespace()
    .nth(1)
    .expect("a fingerprint")
    .to_owned();
    assert!(
        r.stdout.contains(&format!("jump host {jump}"))
            && r.stdout.contains("is unknown")
            && r.stdout.contains(&fingerprint),
        "names the bastion and its fingerprint {fingerprint}:\n{r}"
    );
    assert_eq!(h.current(0).as_deref(), Some(first.as_str()));

    // The same hosts by their ssh_config names: HostName, Port, User, IdentityFile and ProxyJump
    // from there (the bastion's own entry gives its address), deploy.toml naming only aliases.
    std::fs::write(&known, format!("{hosts_only}{bastion_key}")).expect("known_hosts");
    let (ip, user) = (&ns.inside_ip, &bastion.user);
    let identity = h.servers[0].identity.display();
    // The bastion's entry in a file of its own, Included as users keep them.
    let included = h.dir.path().join("ssh_config.d");
    std::fs::create_dir_all(&included).expect("mkdir");
    std::fs::write(
        included.join("gateway"),
        format!("Host gateway\n  HostName {ip}\n  Port 2200\n  User {user}\n"),
    )
    .expect("included file");
    std::fs::write(
        h.dir.path().join("ssh_config"),
        format!(
            "Include {}/*\n\
             Host app-one\n  HostName {ip}\n  Port 2201\n\nHost app-two\n  HostName {ip}\n  Port 2202\n\n\
             Host app-*\n  ProxyJump gateway\n  User {user}\n  IdentityFile {identity}\n",
            included.display()
        ),
    )
    .expect("ssh_config");
    let config = h.dir.path().join("via-ssh-config.toml");
    std::fs::write(
        &config,
        format!(
            "application = \"usersvc\"\ndeploy_to = \"/unused\"\nsource = \"dist\"\n\
             [ssh]\nssh_config = \"ssh_config\"\nknown_hosts = \"known_hosts\"\n\
             [[hosts]]\naddress = \"app-one\"\ndeploy_to = '''{}'''\n\
             [[hosts]]\naddress = \"app-two\"\ndeploy_to = '''{}'''\n",
            h.deploy_to(0).display(),
            h.deploy_to(1).display()
        ),
    )
    .expect("deploy.toml");
    let r = common::deployer(&config, &["deploy"]);
    assert_eq!(r.code, 0, "{r}");
    let second = h.current(0).expect("deployed");
    assert_ne!(second, first);
    assert_eq!(h.current(1).as_deref(), Some(second.as_str()));
    assert_eq!(
        std::fs::read_to_string(h.deploy_to(1).join("current/bin/app")).expect("app"),
        "v2\n"
    );
    assert!(
        r.stdout.contains("app-two"),
        "hosts are named as written: {r}"
    );
    // An included file may not route around the bastion either: refused, naming its line,
    // before any host is reached.
    std::fs::write(
        included.join("zz-direct"),
        "Host *\n  ProxyCommand nc %h %p\n",
    )
    .expect("write");
    let r = common::deployer(&config, &["check"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stderr.contains("zz-direct:2: ProxyCommand"), "{r}");
    drop(h);
    drop(bastion);
}

#[test]
fn a_host_the_bastion_cannot_reach_holds_no_other_host_back() {
    let ns = Netns::start();
    let (bastion, h, _, _) = behind_a_bastion(&ns, 2);
    h.write("bin/app", "v1\n");
    with_ssh(
        &h,
        &format!("proxy_jump = \"{}@{}\"", bastion.user, bastion.addr),
    );
    h.deploy_ok();
    // A listener whose queue is full drops every SYN: the bastion's connect to it waits minutes,
    // as to a host that is powered off behind a firewall.
    let dead = format!("{}:2298", ns.inside_ip);
    let script = format!(
        "import socket, time\ns = socket.socket(); s.bind(('{ip}', 2298)); s.listen(0)\n\
         held = [socket.create_connection(('{ip}', 2298))]\nprint('full', flush=True)\n\
         time.sleep(600)",
        ip = ns.inside_ip
    );
    let mut sink = testbed::Peer::spawn(
        "full listener",
        ns.wrap(std::process::Command::new("python3").args(["-c", &script])),
    );
    sink.wait_for_line(std::time::Duration::from_secs(10), |l| {
        (l == "full").then_some(())
    });
    // One host at a time, the dead one second: the first host's connection keeps the session
    // in use, and the last host asks for its tunnel while the bastion still has not answered
    // for the dead one; it gets one within --timeout all the same.
    let text = std::fs::read_to_string(&h.config).expect("deploy.toml");
    // deploy.toml with the dead host's entry put in at byte `at`.
    let with_dead_at = |at: usize, name: &str| {
        let path = h.dir.path().join(name);
        let entry = format!("[[hosts]]\naddress = \"{dead}\"\ndeploy_to = \"/srv/none\"\n\n");
        std::fs::write(&path, format!("{}{entry}{}", &text[..at], &text[at..])).expect("toml");
        path
    };
    let live_hosts_answered = |r: &common::Run| {
        for s in &h.servers {
            assert!(r.stdout.contains(&format!("{}: v1", s.addr)), "{r}");
        }
    };
    let config = with_dead_at(
        text.rfind("[[hosts]]").expect("two hosts"),
        "dead-second.toml",
    );
    let r = common::deployer(
        &config,
        &[
            "--timeout",
            "3",
            "--parallel",
            "1",
            "exec",
            "--",
            "cat",
            "bin/app",
        ],
    );
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains(&dead), "the dead host is named: {r}");
    live_hosts_answered(&r);
    // The deploy's one login, then this run's: the stuck one and the one the others took.
    assert_eq!(bastion.logins(), 3, "{}", bastion.log());

    // All at once, the dead host first: the live hosts' requests queue behind its open, and
    // are handed on to another session once it is stuck.
    let dead_first = with_dead_at(text.find("[[hosts]]").expect("a host"), "dead-first.toml");
    let r = common::deployer(
        &dead_first,
        &["--timeout", "3", "exec", "--", "cat", "bin/app"],
    );
    assert_eq!(r.code, 1, "{r}");
    live_hosts_answered(&r);
}

#[test]
fn a_bastion_that_does_not_answer_is_tried_once_not_once_per_host() {
    let h = Hosts::start(&[57, 58, 59]);
    h.write("bin/app", "v1\n");
    // A "bastion" that takes connections and never says a word: each login waits out the
    // timeout. It counts the connections it took.
    let script = "import socket, sys\ns = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(16)\n\
                  print(s.getsockname()[1], flush=True)\nheld = []\n\
                  while True:\n    c, _ = s.accept(); held.append(c); print('accepted', flush=True)";
    let mut silent = testbed::Peer::spawn("silent bastion", {
        let mut c = std::process::Command::new("python3");
        c.args(["-c", script]);
        c
    });
    let port: u16 = silent.wait_for_line(std::time::Duration::from_secs(10), |l| l.parse().ok());
    with_ssh(&h, &format!("proxy_jump = \"127.0.0.1:{port}\""));
    let r = h.run(&["--timeout", "2", "exec", "--", "true"]);
    assert_eq!(r.code, 1, "{r}");
    for s in &h.servers {
        assert!(r.stdout.contains(&s.addr), "every host is named: {r}");
    }
    // The hosts that waited for the first login took its answer rather than trying again (200
    // hosts would otherwise wait 200 timeouts, one after the other).
    assert_eq!(silent.log().matches("accepted").count(), 1, "{r}");
    // One host at a time: each asks after the failure, within a timeout of it.
    let r = h.run(&["--timeout", "2", "--parallel", "1", "exec", "--", "true"]);
    assert_eq!(r.code, 1, "{r}");
    assert_eq!(silent.log().matches("accepted").count(), 2, "{r}");
}

#[test]
fn a_fleet_past_the_soft_open_files_limit_is_deployed() {
    let ns = Netns::start();
    let (bastion, h, _, _) = behind_a_bastion(&ns, 3);
    h.write("bin/app", "v1\n");
    with_ssh(
        &h,
        &format!("proxy_jump = \"{}@{}\"", bastion.user, bastion.addr),
    );
    // Three hosts through a bastion hold about twenty descriptors; a soft limit of 12 (the hard
    // one as it was) stands for 1,024 against a fleet of hundreds.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 12 && exec \"$0\" -c \"$1\" deploy")
        .arg(env!("CARGO_BIN_EXE_deployer"))
        .arg(&h.config)
        .envs(common::homes(&h.config))
        .output()
        .expect("sh");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{shown}");
    for i in 0..3 {
        assert!(h.current(i).is_some(), "host {i}: {shown}");
    }
}

#[test]
fn a_host_lost_mid_upload_leaves_the_others_tunnels_working() {
    let ns = Netns::start();
    let (bastion, mut h, _, _) = behind_a_bastion(&ns, 3);
    h.write("bin/app", "v1\n");
    with_ssh(
        &h,
        &format!("proxy_jump = \"{}@{}\"", bastion.user, bastion.addr),
    );
    h.deploy_ok();
    let first = h.current(0).expect("deployed");
    // 24 MiB that do not compress to each host: the session to the bastion is busy, its socket
    // full, when the third host goes away mid-upload.
    let noise = common::noise(0x2545_F491_4F6C_DD1D, 24 << 20);
    std::fs::write(h.source.join("blob"), &noise).expect("blob");
    let mut deploy = common::spawn_deployer(&h.config, &["--timeout", "60", "deploy"]);
    testbed::process::eventually(
        "the third host's upload to start",
        std::time::Duration::from_secs(30),
        || h.releases(2).len() > 1,
    );
    let lost = h.servers[2].addr.clone();
    h.servers[2].kill();
    // No step may wait out its timeout: libssh2 left mid-packet by the lost connection once
    // spent the whole --timeout on each step after it (three of them).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut ended = false;
    while !ended && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        ended = matches!(deploy.try_wait(), Ok(Some(_)));
    }
    if !ended {
        let _ = deploy.kill();
    }
    let out = deploy.wait_with_output();
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ended, "the deploy waited out its 60 s timeout: {shown}");
    assert_eq!(out.status.code(), Some(1), "{shown}");
    assert!(
        shown.contains(&format!("failed on {lost} at upload")),
        "{shown}"
    );
    // The others were backed out through the same session: live release unchanged, nothing
    // staged left behind.
    for i in 0..2 {
        assert_eq!(h.current(i).as_deref(), Some(first.as_str()), "{shown}");
        assert_eq!(
            h.releases(i).len(),
            1,
            "host {i} keeps only its live release: {shown}"
        );
    }
}

/// Plays usersvc on each host for the Riemann sink: every 200 ms, events for `app{i}` carrying
/// the revision the host's `current` release holds, with errors when that revision is "bad".
struct Reporter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Reporter {
    fn start(sink: std::net::SocketAddr, deploy_dirs: Vec<std::path::PathBuf>) -> Self {
        use riemann_probe::{Client, ClientConfig, event};
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = stop.clone();
        std::thread::spawn(move || {
            let mut client = None;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let mut events = Vec::new();
                for (i, d) in deploy_dirs.iter().enumerate() {
                    let Ok(revision) = std::fs::read_to_string(d.join("current/REVISION")) else {
                        continue;
                    };
                    let revision = revision.trim();
                    if revision == "silent" {
                        continue; // a release whose service never reports
                    }
                    let errors = if revision == "bad" { 5.0 } else { 0.2 };
                    for (service, metric) in [
                        ("usersvc errors rate", errors),
                        ("usersvc latency p99", 0.010),
                    ] {
                        events.push(
                            event(service)
                                .host(format!("app{i}"))
                                .attribute("revision", revision)
                                .metric(metric)
                                .ttl(2.0)
                                .build(),
                        );
                        // Anyone who can send to Riemann, vouching for whatever app0 runs
                        // with thirty hosts' worth of perfect figures: never counted.
                        if i == 0 {
                            for m in 0..30 {
                                events.push(
                                    event(service)
                                        .host(format!("mallory{m}"))
                                        .attribute("revision", revision)
                                        .metric(0.0)
                                        .ttl(2.0)
                                        .build(),
                                );
                            }
                        }
                    }
                }
                // A failed send is retried on a new connection: the events keep coming.
                let sent = client
                    .take()
                    .or_else(|| Client::connect(&ClientConfig::tcp(sink.to_string())).ok())
                    .and_then(|mut c| c.send(&events).ok().map(|_| c));
                client = sent;
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        });
        Self { stop }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[test]
fn a_canary_that_does_worse_in_riemann_is_rolled_back_and_a_healthy_one_goes_on() {
    let h = Hosts::start(&[47, 48, 49]);
    let sink = testbed::riemann::Sink::start();
    // The names the hosts' events carry (usersvc's riemann_host).
    h.configure_hosts(
        "",
        &format!(
            "[riemann]\nserver = \"{}\"\n[canary]\ninterval = \"300ms\"\n",
            sink.tcp_addr()
        ),
        &|i| format!("riemann_host = \"app{i}\"\n"),
    );
    let _usersvc = Reporter::start(
        sink.tcp_addr(),
        (0..3).map(|i| h.deploy_to(i).to_owned()).collect(),
    );
    h.write("v", "1");
    assert_eq!(h.run(&["deploy", "--revision", "good1"]).code, 0);
    let revision = |i: usize| h.revision(i);

    // Healthy: the canary does as well as the rest, and the deploy goes on, host by host.
    h.write("v", "2");
    let plan = h.run(&["deploy", "--dry-run", "--rolling", "1", "--canary", "2s"]);
    assert!(
        plan.stdout
            .contains("canary first: 1 host(s), watched for 2s"),
        "{plan}"
    );
    let r = h.run(&[
        "deploy",
        "--revision",
        "good2",
        "--rolling",
        "1",
        "--canary",
        "2s",
    ]);
    assert_eq!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains("canary: went on after")
            && r.stdout.contains(
                "revision good2 (app0) against the others (app1, app2): errors 0.20/s vs 0.20/s"
            ),
        "{r}"
    );
    assert_eq!((0..3).map(revision).collect::<Vec<_>>(), ["good2"; 3]);
    let good = h.current(0).expect("current");

    // Worse: the canary's errors rate is 25× the others'; it goes back, the rest never move.
    h.write("v", "3");
    let r = h.run(&[
        "deploy",
        "--revision",
        "bad",
        "--rolling",
        "1",
        "--canary",
        "3s",
    ]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains(
            "canary: stopped: revision bad (app0) against the others (app1, app2): errors 5.00/s vs 0.20/s (ratio 25.00 > 2)"
        ),
        "the report says what was compared and why it stopped:\n{r}"
    );
    assert!(
        r.stderr.contains("at canary: worse than the old release"),
        "{r}"
    );
    assert_eq!((0..3).map(revision).collect::<Vec<_>>(), ["good2"; 3]);
    assert_eq!(h.current(0), Some(good.clone()));
    let last = h.log(0).pop().expect("logged");
    assert_eq!(
        (last["outcome"].as_str(), last["stage"].as_str()),
        (Some("rolled_back"), Some("canary"))
    );
    let staged_only = h.log(1).pop().expect("logged");
    assert_eq!(
        staged_only["outcome"], "failed",
        "host 1 only staged the bad release, and dropped it: {staged_only}"
    );
    assert_eq!(h.releases(1).len(), 2, "the staged release is gone");

    // Never heard of: a canary nobody can see did not pass.
    h.write("v", "4");
    let r = h.run(&["deploy", "--revision", "silent", "--canary", "1s"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains(
            "canary: stopped: no usersvc errors rate or latency p99 events of revision silent"
        ),
        "{r}"
    );
    assert_eq!((0..3).map(revision).collect::<Vec<_>>(), ["good2"; 3]);

    // Nothing to watch with: refused before anything happens.
    h.configure("", "");
    let r = h.run(&["deploy", "--canary", "1s"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("--canary has nothing to watch with"),
        "{r}"
    );
}

/// A directory its owner cannot write: tar gives it its mode only once the stream ends, so
/// nothing could be linked into it after. The unchanged files then travel as tar link entries,
/// and are links into the live release all the same; the directory keeps its mode.
#[test]
fn a_tree_with_a_read_only_directory_is_linked_by_tar() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let h = Hosts::start(&[90]);
    for (path, text) in [("v", "1"), ("ro/a", "a"), ("ro/b", "b")] {
        h.write(path, text);
    }
    let ro = std::fs::Permissions::from_mode(0o555);
    std::fs::set_permissions(h.source.join("ro"), ro).expect("chmod");
    h.deploy_ok();
    let first = h.current(0).expect("current");
    h.write("v", "2");
    let r = h.run(&["deploy", "--dry-run", "-v"]);
    assert!(
        r.stdout.contains("2 hard-linked from") && r.stdout.contains("by tar"),
        "{r}"
    );
    let r = h.deploy_ok();
    assert!(
        r.stdout.contains(" 1 files") && r.stdout.contains(" 2 files"),
        "{r}"
    );
    let releases = h.deploy_to(0).join("releases");
    let ino = |release: &str| {
        std::fs::metadata(releases.join(release).join("ro/a"))
            .expect("ro/a")
            .ino()
    };
    assert_eq!(ino(&first), ino(&h.current(0).expect("current")));
    let dir = std::fs::metadata(h.deploy_to(0).join("current/ro")).expect("ro");
    assert_eq!(dir.permissions().mode() & 0o777, 0o555);
}

/// The names of the files to link are read on the host from the live manifest, or, when one
/// of them is escaped there (a quote), sent as a list; either way the unchanged files are the
/// live release's own.
#[test]
fn the_names_to_link_are_read_on_the_host_unless_one_is_escaped() {
    use std::os::unix::fs::MetadataExt;
    let h = Hosts::start(&[91]);
    for (path, text) in [("v", "1"), ("lib/a b", "a"), ("lib/c", "c")] {
        h.write(path, text);
    }
    h.deploy_ok();
    let releases = h.deploy_to(0).join("releases");
    let ino = |release: &str, path: &str| {
        std::fs::metadata(releases.join(release).join(path))
            .expect(path)
            .ino()
    };
    let mut before = h.current(0).expect("current");
    // Release 3 adds a name with a quote, which its manifest escapes: release 4 sends a list.
    for (version, quoted, how) in [
        ("2", false, "by the names its manifest holds"),
        ("3", true, "by the names its manifest holds"),
        ("4", false, "by name"),
    ] {
        if quoted {
            h.write("lib/quo\"te", "q");
        }
        h.write("v", version);
        let r = h.run(&["deploy", "--dry-run", "-v"]);
        assert!(
            r.stdout
                .contains(&format!("hard-linked from {before} {how}")),
            "{r}"
        );
        h.deploy_ok();
        let now = h.current(0).expect("current");
        for path in ["lib/a b", "lib/c"] {
            assert_eq!(ino(&before, path), ino(&now, path), "{path} in {now}");
        }
        if version == "4" {
            assert_eq!(ino(&before, "lib/quo\"te"), ino(&now, "lib/quo\"te"));
        }
        assert_eq!(
            std::fs::read_to_string(releases.join(&now).join("v")).expect("v"),
            version
        );
        before = now;
    }
}
