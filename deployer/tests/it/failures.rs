//! All or nothing: failures before publish change no `current` and leave no staged release or
//! lock; failures after publish put every host back. Real sshd servers throughout.

use crate::common;

use common::Hosts;
use std::path::Path;
use std::time::Duration;
use testbed::process::eventually;

/// A before_publish hook that waits until the test says go (so the test can act while every
/// host is staged and none is published).
fn wait_hook(go: &Path) -> String {
    format!(
        "[hooks]\nbefore_publish = [\"while [ ! -e '{}' ]; do sleep 0.05; done\"]\n",
        go.display()
    )
}

/// Asserts host `i` still has exactly `releases` and `current` → `current`, and no lock.
fn untouched(h: &Hosts, i: usize, releases: &[String], current: &str) {
    assert_eq!(
        h.current(i).as_deref(),
        Some(current),
        "host {i}: current moved"
    );
    assert_eq!(
        h.releases(i),
        releases,
        "host {i}: staged release left behind"
    );
    assert!(!h.locked(i), "host {i}: lock left behind");
}

fn big_tree(h: &Hosts) {
    // 20 MB, so the upload is still running when the test pulls a host away.
    let blob: String = (0..100_000).map(|i| format!("{i:09}\n")).collect();
    for i in 0..20 {
        h.write(&format!("blob{i}"), &blob);
    }
}

#[test]
fn a_host_lost_during_staging_changes_no_host() {
    let mut h = Hosts::start(&[8, 9, 10]);
    h.write("v", "1");
    h.deploy_ok();
    let first = h.current(0).expect("current");
    let go = h.dir.path().join("go");
    h.configure("", &wait_hook(&go));
    big_tree(&h);

    let child = common::spawn_deployer(&h.config, &["deploy"]);
    // As soon as host 1 starts receiving the release, it goes away (sshd and its sessions).
    eventually("host 1 is staging", Duration::from_secs(30), || {
        h.releases(1).len() > 1
    });
    h.servers[1].kill();
    std::fs::write(&go, "").expect("go");
    let out = child.wait_with_output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let host1 = &h.servers[1].addr;
    assert!(
        stderr.contains(&format!("failed on {host1} at ")),
        "names the host and stage: {stderr}"
    );
    for i in [0, 2] {
        untouched(&h, i, std::slice::from_ref(&first), &first);
        let log = h.log(i);
        assert_eq!(log.last().expect("log")["outcome"], "failed");
    }
    assert_eq!(h.current(1).as_deref(), Some(first.as_str()));
    // The lost host keeps this run's lock, and the report says how to clear it.
    assert!(h.locked(1));
    assert!(stdout.contains("deployer unlock --hosts"), "{stdout}");
}

#[test]
fn a_failing_before_publish_hook_changes_no_host() {
    let h = Hosts::start(&[11, 12]);
    h.write("v", "1");
    h.deploy_ok();
    let first = h.current(0).expect("current");
    std::fs::write(h.deploy_to(1).join("refuse"), "").expect("marker");
    h.configure(
        "",
        "[hooks]\nbefore_publish = [\"true\", \"test ! -e \\\"$DEPLOY_TO/refuse\\\" || { echo refusing on purpose >&2; exit 7; }\"]\n",
    );
    h.write("v", "2");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains(&format!(
            "failed on {} at before_publish",
            h.servers[1].addr
        )) && r.stderr.contains("refusing on purpose")
            && r.stderr.contains("exited 7"),
        "{r}"
    );
    for i in 0..2 {
        untouched(&h, i, std::slice::from_ref(&first), &first);
    }
    let log = h.log(0);
    let last = log.last().expect("log");
    assert_eq!(last["outcome"], "failed");
    assert_eq!(last["stage"], "before_publish");
}

#[test]
fn a_failing_health_gate_puts_every_host_back() {
    let h = Hosts::start(&[13, 14]);
    let flags = h.dir.path().join("healthy");
    std::fs::create_dir_all(&flags).expect("mkdir");
    let health = format!(
        "[hooks]\nafter_publish = [\"echo \\\"$RELEASE $REVISION\\\" >> \\\"$DEPLOY_TO/restarts\\\"\"]\n[health]\ncommand = \"sh -c 'test -e \\\"$0\\\" && echo OK - up || {{ echo CRITICAL - down; exit 2; }}' '{}/{{host}}'\"\nretries = 2\ninterval = \"50ms\"\n",
        flags.display()
    );
    h.configure("", &health);
    // Both healthy: the first release goes live.
    for s in &h.servers {
        std::fs::write(flags.join(&s.ip), "").expect("flag");
    }
    h.write("v", "1");
    assert_eq!(h.run(&["deploy", "--revision", "one"]).code, 0);
    let first = h.current(0).expect("current");
    // Host 1 turns unhealthy: the second release is published, then taken back everywhere.
    std::fs::remove_file(flags.join(&h.servers[1].ip)).expect("unflag");
    h.write("v", "2");
    let r = h.run(&["deploy", "--revision", "two"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains(&format!("failed on {} at health", h.servers[1].addr))
            && r.stderr.contains("CRITICAL - down")
            && r.stderr.contains("after 3 checks"),
        "{r}"
    );
    let releases = h.releases(0);
    assert_eq!(releases.len(), 2, "the bad release stays, marked");
    let bad = releases[1].clone();
    for i in 0..2 {
        assert_eq!(h.current(i).as_deref(), Some(first.as_str()), "host {i}");
        assert!(!h.locked(i));
        // Restarted on the new release, then on the old one again, each with its own revision.
        let restarts = std::fs::read_to_string(h.deploy_to(i).join("restarts")).expect("restarts");
        assert_eq!(
            restarts.lines().collect::<Vec<_>>(),
            [
                format!("{first} one"),
                format!("{bad} two"),
                format!("{first} one")
            ],
            "host {i}"
        );
        assert_eq!(h.log(i).last().expect("log")["outcome"], "rolled_back");
        assert!(r.stdout.contains(&format!("rolled back to {first}")), "{r}");
    }
    let r = h.run(&["releases"]);
    let bad_line = r
        .stdout
        .lines()
        .find(|l| l.contains(&bad))
        .expect("bad release listed");
    assert!(bad_line.contains("bad (failed at health: "), "{r}");
    // rollback never goes to a bad release, and the next deploy's cleanup removes it.
    std::fs::write(flags.join(&h.servers[1].ip), "").expect("flag");
    h.write("v", "3");
    h.deploy_ok();
    assert!(!h.releases(0).contains(&bad));
    assert!(!h.releases(1).contains(&bad));
}

#[test]
fn rolling_publish_stops_at_the_first_unhealthy_batch() {
    // The in-process JSON-RPC gate against a real usersvc listening on two of the three hosts.
    let h = Hosts::start(&[15, 16, 17]);
    let port = testbed::process::free_port("127.0.0.15");
    let up: Vec<testbed::usersvc::Usersvc> = ["127.0.0.15", "127.0.0.17"]
        .iter()
        .map(|ip| {
            testbed::usersvc::Usersvc::start_with(
                &testbed::usersvc::binary(),
                &["--listen", &format!("{ip}:{port}")],
            )
        })
        .collect();
    h.configure(
        "",
        &format!(
            "[health]\nurl = \"http://{{host}}:{port}/\"\nmethod = \"ping\"\nretries = 1\ninterval = \"100ms\"\ntimeout = \"2s\"\n"
        ),
    );
    h.write("v", "1");
    let r = h.run(&["deploy", "--hosts", &h.servers[0].addr]);
    assert_eq!(r.code, 0, "{r}");
    let r = h.run(&[
        "deploy",
        "--hosts",
        &format!("{},{}", h.servers[0].addr, h.servers[2].addr),
    ]);
    assert_eq!(r.code, 0, "{r}");
    let before: Vec<Option<String>> = (0..3).map(|i| h.current(i)).collect();
    let host2_releases = h.releases(2);
    assert!(before[1].is_none() && before[0].is_some() && before[2].is_some());

    // One host at a time: host 0 publishes and passes, host 1 fails (nothing listens there),
    // host 2 is never published. Every host ends where it started.
    h.write("v", "2");
    let r = h.run(&["deploy", "--rolling", "1"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains(&format!("failed on {} at health", h.servers[1].addr)),
        "{r}"
    );
    assert!(
        r.stderr.contains("publishing") && r.stderr.contains("hosts 2-2 of 3"),
        "{r}"
    );
    assert!(!r.stderr.contains("hosts 3-3 of 3"), "no third batch: {r}");
    for (i, was) in before.iter().enumerate() {
        assert_eq!(&h.current(i), was, "host {i}");
        assert!(!h.locked(i));
    }
    // Host 2 never published: its staged copy is gone, not marked bad.
    assert_eq!(h.releases(2), host2_releases, "{r}");
    // Host 1 had no previous release: its current is removed again.
    assert!(!h.deploy_to(1).join("current").exists());
    drop(up);
}

#[test]
fn a_second_deploy_is_refused_while_the_first_holds_the_lock() {
    let h = Hosts::start(&[18, 19]);
    let go = h.dir.path().join("go");
    h.configure("", &wait_hook(&go));
    h.write("v", "1");
    let first = common::spawn_deployer(&h.config, &["deploy", "--quiet"]);
    eventually(
        "the first deploy holds both locks",
        Duration::from_secs(30),
        || h.locked(0) && h.locked(1),
    );
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("at lock: locked by another deploy")
            && r.stderr.contains(&format!("pid {}", first.id())),
        "names the holder: {r}"
    );
    // unlock without --force does not take a live deploy's lock either.
    let r = h.run(&["unlock"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(h.locked(0) && h.locked(1));
    std::fs::write(&go, "").expect("go");
    let out = first.wait_with_output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(h.current(0).is_some() && h.current(1).is_some());
    assert!(!h.locked(0) && !h.locked(1));
}

#[test]
fn with_lock_wait_a_second_deploy_waits_for_the_first_then_ships() {
    let h = Hosts::start(&[27, 28]);
    let go = h.dir.path().join("go");
    h.configure("", &wait_hook(&go));
    h.write("v", "1");
    let first = common::spawn_deployer(&h.config, &["deploy", "--quiet"]);
    eventually(
        "the first deploy holds both locks",
        Duration::from_secs(30),
        || h.locked(0) && h.locked(1),
    );
    h.write("v", "2");
    let mut second =
        common::spawn_deployer(&h.config, &["deploy", "--quiet", "--lock-wait", "60s"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        second.try_wait().expect("poll").is_none(),
        "the second deploy waits while the first holds the locks"
    );
    std::fs::write(&go, "").expect("go");
    let first_out = first.wait_with_output();
    assert!(
        first_out.status.success(),
        "{}",
        String::from_utf8_lossy(&first_out.stderr)
    );
    let first_release = h.current(0).expect("first published");
    let out = second.wait_with_output();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("locked by") && err.contains("waiting up to 1m (--lock-wait)"),
        "says who holds it: {err}"
    );
    assert!(err.contains("took the lock after waiting"), "{err}");
    let second_release = h.current(0).expect("second published");
    assert_ne!(first_release, second_release);
    assert_eq!(h.current(1).as_deref(), Some(second_release.as_str()));
    assert!(!h.locked(0) && !h.locked(1));

    // The wait is bounded: a lock that stays is reported, with how long it was waited for.
    let lock = h.deploy_to(0).join(".deploy/lock");
    std::fs::create_dir_all(&lock).expect("lock");
    std::fs::write(
        lock.join("owner"),
        "ci@runner7 pid 42 since 2026-12-01T10:00:00Z\n",
    )
    .expect("owner");
    let r = h.run(&["deploy", "--lock-wait", "2s"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr
            .contains("locked by another deploy: ci@runner7 pid 42")
            && r.stderr.contains("after waiting 2s"),
        "{r}"
    );
    assert_eq!(h.current(0).as_deref(), Some(second_release.as_str()));
}

#[test]
fn unlock_clears_stale_locks_and_force_clears_any() {
    let h = Hosts::start(&[20]);
    let lock = h.deploy_to(0).join(".deploy/lock");
    let hold = |owner: &str| {
        std::fs::create_dir_all(&lock).expect("lock");
        std::fs::write(lock.join("owner"), format!("{owner}\n")).expect("owner");
    };
    // A lock of this user on this machine whose process is gone: stale, cleared.
    let me = format!(
        "{}@{} pid 4000000000 since 2026-11-23T10:00:00Z",
        h.servers[0].user,
        toolkit_core::hostname()
    );
    hold(&me);
    let r = h.run(&["unlock"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("removed the stale lock"), "{r}");
    assert!(!lock.exists());
    // Someone else's: refused without --force, named.
    hold("alice@laptop pid 12 since 2026-11-23T10:00:00Z");
    let r = h.run(&["unlock"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("alice@laptop") && r.stdout.contains("--force"),
        "{r}"
    );
    assert!(lock.exists());
    let r = h.run(&["unlock", "--force"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(r.stdout.contains("removed the lock of alice@laptop"), "{r}");
    assert!(!lock.exists());
    let r = h.run(&["unlock"]);
    assert!(r.stdout.contains("not locked"), "{r}");
}

#[test]
fn an_interrupted_deploy_cleans_up_after_itself() {
    let h = Hosts::start(&[24, 25]);
    h.write("v", "1");
    h.deploy_ok();
    let first = h.current(0).expect("current");
    let go = h.dir.path().join("go");
    h.configure("", &wait_hook(&go));
    h.write("v", "2");
    let child = common::spawn_deployer(&h.config, &["deploy"]);
    eventually("both hosts staged", Duration::from_secs(30), || {
        (0..2).all(|i| h.releases(i).len() == 2)
    });
    // Ctrl-C while the hooks run: the run finishes the step, then backs out everywhere.
    let pid = i32::try_from(child.id()).expect("pid");
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    std::fs::write(&go, "").expect("go");
    let out = child.wait_with_output();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted by a signal"), "{stderr}");
    for i in 0..2 {
        untouched(&h, i, std::slice::from_ref(&first), &first);
    }
}

/// The shared links are made by the upload's own remote step (the script travels at the end of
/// the tar stream): when they cannot be made on one host, that host fails "at shared links" with
/// the script's words, and every host is left as it was.
#[test]
fn shared_links_that_cannot_be_made_fail_at_shared_links_and_change_no_host() {
    let h = Hosts::start(&[83, 84]);
    h.write("v", "1");
    h.deploy_ok();
    let before: Vec<(Vec<String>, String)> = (0..2)
        .map(|i| (h.releases(i), h.current(i).expect("current")))
        .collect();
    // Seeded from the release, which has no such file, and host 1 has none in shared/.
    h.configure("shared_files = [{ path = \"app.conf\", seed = true }]", "");
    std::fs::write(h.deploy_to(0).join("shared/app.conf"), "kept\n").expect("host 0 has it");
    h.write("v", "2");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("shared links")
            && r.stdout
                .contains("is not in shared/, and the release has none to seed it from"),
        "{r}"
    );
    for (i, (releases, current)) in before.iter().enumerate() {
        untouched(&h, i, releases, current);
        let scripts: Vec<_> = std::fs::read_dir(h.deploy_to(i).join(".deploy"))
            .expect(".deploy")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("staged-"))
            .collect();
        assert!(
            scripts.is_empty(),
            "host {i}: the staging script is removed"
        );
    }
}

/// Unchanged files are linked on the host from its live release; one gone from it there fails
/// the upload, naming the link step and the file, and no host changes: no release, no manifest
/// and no staged file left behind.
#[test]
fn a_file_gone_from_the_live_release_fails_the_upload_and_changes_no_host() {
    let h = Hosts::start(&[88, 89]);
    for (path, text) in [("v", "1"), ("lib/b", "b"), ("lib/c", "c")] {
        h.write(path, text);
    }
    h.deploy_ok();
    let before: Vec<(Vec<String>, String)> = (0..2)
        .map(|i| (h.releases(i), h.current(i).expect("current")))
        .collect();
    std::fs::remove_file(h.deploy_to(1).join("current/lib/b")).expect("rm on host 1");
    h.write("v", "2");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout
            .contains("linking the unchanged files from release")
            && r.stdout.contains("lib/b"),
        "{r}"
    );
    for (i, (releases, current)) in before.iter().enumerate() {
        untouched(&h, i, releases, current);
        let dot = h.deploy_to(i).join(".deploy");
        let manifests: Vec<_> = std::fs::read_dir(dot.join("manifests"))
            .expect("manifests")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            manifests,
            std::slice::from_ref(current),
            "host {i}: only the live release's manifest"
        );
        let staged = std::fs::read_dir(&dot)
            .expect(".deploy")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("staged-"))
            .count();
        assert_eq!(staged, 0, "host {i}: staged files removed");
    }
    // Once the file is back, the next deploy links it again. What an upload killed on the host
    // left staged over an hour ago is removed under the lock; a newer one is not its to touch.
    std::fs::write(h.deploy_to(1).join("current/lib/b"), "b").expect("restore");
    let dot = h.deploy_to(1).join(".deploy");
    let (old, new) = (dot.join("staged-1-a.links"), dot.join("staged-2-b.links"));
    for f in [&old, &new] {
        std::fs::write(f, "x").expect("staged");
    }
    let hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let f = std::fs::File::options()
        .write(true)
        .open(&old)
        .expect("open");
    f.set_modified(hours_ago).expect("mtime");
    let r = h.deploy_ok();
    assert!(
        r.stdout.contains(" 2 files"),
        "v sent, lib/b and lib/c linked:\n{r}"
    );
    assert!(
        !old.exists() && new.exists(),
        "only the old staged file is removed"
    );
}

/// A task run by hand takes the deploy lock: while a deploy holds it, `deployer run` does not
/// run on its hosts and names the holder (a migration racing a deploy's hooks is how a schema
/// and its code part); `--no-lock` runs a task that only reads. Afterwards no lock is left.
#[test]
fn a_task_run_by_hand_waits_for_no_deploy_and_keeps_out_of_one() {
    let h = Hosts::start(&[86, 87]);
    let go = h.dir.path().join("go");
    let task = "[tasks.mark]\ncommand = 'echo \"$RELEASE\" >> \"$DEPLOY_TO/shared/marks\"'\n";
    h.configure("", &format!("{task}{}", wait_hook(&go)));
    std::fs::write(&go, "").expect("no wait for the first deploy");
    h.write("v", "1");
    h.deploy_ok();
    std::fs::remove_file(&go).expect("the next deploy waits");
    h.write("v", "2");
    let deploy = common::spawn_deployer(&h.config, &["deploy", "--quiet"]);
    eventually(
        "the deploy holds both locks",
        Duration::from_secs(30),
        || h.locked(0) && h.locked(1),
    );
    let r = h.run(&["run", "mark"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("locked by another deploy")
            && r.stdout.contains(&format!("pid {}", deploy.id())),
        "{r}"
    );
    let marks =
        |i: usize| std::fs::read_to_string(h.deploy_to(i).join("shared/marks")).unwrap_or_default();
    assert_eq!(marks(0), "", "not run beside the deploy");
    let r = h.run(&["run", "mark", "--no-lock"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(marks(0).lines().count(), 1, "--no-lock runs beside it");
    assert!(
        h.locked(0) && h.locked(1),
        "the deploy's locks are untouched"
    );
    std::fs::write(&go, "").expect("go");
    let out = deploy.wait_with_output();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = h.run(&["run", "mark"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(marks(1).lines().count(), 2);
    assert!(
        !h.locked(0) && !h.locked(1),
        "the task's locks are released"
    );
}
