//! A deploy is never silent and never builds for nothing: every host is locked before the
//! build runs, the build's output is shown as it is written (`-v`), each local step says when
//! it starts and ends, and a Ctrl-C during the build stops it whole and releases the locks.

use crate::common::{self, Hosts};
use std::io::BufRead;
use std::sync::mpsc;
use std::time::Duration;
use testbed::eventually;

/// The deployer's stderr, line by line as it is written.
fn stderr_lines(running: &mut common::Running) -> mpsc::Receiver<String> {
    let err = running.stderr.take().expect("stderr piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Reads `lines` until one contains `text` (all read so far is returned either way).
fn wait_for(lines: &mpsc::Receiver<String>, text: &str, seen: &mut Vec<String>) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match lines.recv_timeout(left) {
            Ok(line) => {
                let found = line.contains(text);
                seen.push(line);
                if found {
                    return true;
                }
            }
            Err(_) => return false,
        }
    }
    false
}

#[test]
fn the_lock_comes_before_the_build_and_the_build_is_shown_as_it_runs() {
    let h = Hosts::start(&[70]);
    h.write("app.txt", "v1");
    // A held lock fails the deploy before the build runs, waited for or not.
    let lock = h.deploy_to(0).join(".deploy/lock");
    std::fs::create_dir_all(&lock).expect("lock");
    std::fs::write(
        lock.join("owner"),
        "ci@runner7 pid 42 since 2026-12-01T10:00:00Z\n",
    )
    .expect("owner");
    h.configure(
        "build = \"touch built\"",
        "[hooks]\nlocal_failed = ['echo \"$DEPLOY_OUTCOME\" > failed-ran']\nlocal_after = ['touch after-ran']\n",
    );
    for args in [&["deploy"][..], &["deploy", "--lock-wait", "1s"]] {
        let r = h.run(args);
        assert_eq!(r.code, 1, "{r}");
        assert!(
            r.stderr.contains("locked by another deploy: ci@runner7"),
            "{r}"
        );
        // Whatever ends a deploy, its local_failed and local_after hooks run.
        let failed = std::fs::read_to_string(h.dir.path().join("failed-ran"));
        assert_eq!(
            failed.ok().as_deref(),
            Some("failed\n"),
            "local_failed: {r}"
        );
        let after = h.dir.path().join("after-ran");
        assert!(after.exists(), "local_after ran: {r}");
        std::fs::remove_file(after).expect("rm");
        assert!(
            !h.dir.path().join("built").exists(),
            "built for nothing: {r}"
        );
    }
    std::fs::remove_dir_all(&lock).expect("unlock");

    // The build's first line arrives while it still runs (it waits for the test to see it), and
    // the host is locked by then.
    let go = h.dir.path().join("go");
    let build = format!(
        "echo compiling one; i=0; while [ ! -e '{}' ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; echo compiling two >&2",
        go.display()
    );
    h.configure(&format!("build = \"{build}\""), "");
    let mut running = common::spawn_deployer(&h.config, &["-v", "deploy"]);
    let lines = stderr_lines(&mut running);
    let mut seen = Vec::new();
    assert!(
        wait_for(&lines, "build: compiling one", &mut seen),
        "the build's output is not streamed: {seen:?}"
    );
    assert!(h.locked(0), "locked before the build");
    std::fs::write(&go, "").expect("go");
    let status = running.wait().expect("wait");
    seen.extend(lines.iter());
    let said = seen.join("\n");
    assert!(status.success(), "{said}");
    for step in [
        "deployer: locking",
        "deployer: building: echo compiling one",
        "build: compiling two",
        "deployer: built in ",
        "deployer: read 1 files: 1 hashed (2 B), 0 unchanged since the last read in ",
        ": staged: 1 files sent (",
    ] {
        assert!(said.contains(step), "no {step:?} in:\n{said}");
    }
    assert!(!h.locked(0));

    // A dry run says what it hashed too.
    let r = h.run(&["deploy", "--dry-run"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stderr.contains("deployer: read 1 files: "), "{r}");
}

#[test]
fn a_signal_during_the_build_stops_it_whole_and_unlocks() {
    let h = Hosts::start(&[71]);
    h.write("app.txt", "v1");
    let pid_file = h.dir.path().join("sleep.pid");
    h.configure(
        &format!(
            "build = \"sleep 600 & echo $! > '{}'; echo started; wait\"",
            pid_file.display()
        ),
        "",
    );
    let mut running = common::spawn_deployer(&h.config, &["-v", "deploy"]);
    let lines = stderr_lines(&mut running);
    let mut seen = Vec::new();
    assert!(wait_for(&lines, "build: started", &mut seen), "{seen:?}");
    assert!(h.locked(0));
    testbed::process::signal(running.id(), nix::libc::SIGINT);
    let status = running.wait().expect("wait");
    seen.extend(lines.iter());
    let said = seen.join("\n");
    assert_eq!(status.code(), Some(1), "{said}");
    assert!(said.contains("stopped by a signal"), "{said}");
    assert!(!h.locked(0), "the lock is released: {said}");
    assert!(h.releases(0).is_empty() && h.current(0).is_none());
    let sleeper: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    eventually(
        "what the build started is stopped with it",
        Duration::from_secs(10),
        || !alive(sleeper),
    );
}

/// Whether `pid` runs (a zombie waiting for whoever adopted it does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

/// On a terminal, a fleet (more than 8 hosts) gets one staging bar, 8 hosts still one each: all the
/// bytes, and how many hosts are done, failed and running. Run under a pseudo-terminal
/// (`script`), as a user at a terminal would see it.
#[test]
fn a_fleet_stages_under_one_bar_counting_its_hosts() {
    let ips: Vec<u8> = (85..=93).collect();
    let h = Hosts::start(&ips);
    h.write("v", "1");
    let on_a_terminal = |hosts: &str| {
        let line = format!(
            "stty cols 200; exec {} -c {} deploy --hosts {hosts}",
            env!("CARGO_BIN_EXE_deployer"),
            h.config.display()
        );
        let out = std::process::Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .envs(common::homes(&h.config))
            .output()
            .expect("script (util-linux) runs the deployer under a pseudo-terminal");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{text}");
        text
    };
    // Eight hosts, the limit: a bar each.
    let names: Vec<String> = h.servers.iter().map(|s| s.addr.clone()).collect();
    let text = on_a_terminal(&names[..8].join(","));
    assert!(!text.contains("8 hosts ["), "{text}");
    assert!(
        names[..8].iter().all(|n| text.contains(&format!("{n} ["))),
        "{text}"
    );
    // Nine: one bar for them all.
    h.write("v", "2");
    let text = on_a_terminal(&names.join(","));
    assert!(text.contains("9 hosts ["), "one bar for the fleet: {text}");
    assert!(text.contains("9/9 done, 0 failed, 0 running"), "{text}");
    let first = format!("{} [", h.servers[0].addr);
    assert!(!text.contains(&first), "no bar of its own per host: {text}");
    assert!((0..9).all(|i| h.current(i).is_some()));
}

#[test]
fn a_second_read_takes_unchanged_files_from_the_cache_the_first_wrote() {
    let h = Hosts::start(&[72]);
    for f in ["a.txt", "b.txt", "c.txt"] {
        h.write(f, f);
    }
    h.configure("", "");
    // A file changed in the last two seconds before the cache is written is not kept in it
    // (whole seconds: up to three).
    std::thread::sleep(std::time::Duration::from_millis(3100));
    let deploy_reading = |read: &str| {
        let r = h.run(&["-v", "deploy"]);
        assert_eq!(r.code, 0, "{r}");
        assert!(r.stderr.contains(read), "{r}");
    };
    deploy_reading("read 3 files: 3 hashed (15 B), 0 unchanged");
    // The cache the first deploy wrote, on a thread of its own, is the second's.
    h.write("b.txt", "changed");
    deploy_reading("read 3 files: 1 hashed (7 B), 2 unchanged");
}
