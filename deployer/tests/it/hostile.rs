//! The deploy machine never trusts what a host holds: a revision is data (one argument of the
//! gate, never shell text), text from hosts is escaped before a terminal sees it, and a hook is
//! bounded in time (killed on the host) and in the output kept. Real sshd hosts on loopback.

use crate::common;

use common::Hosts;
use std::time::{Duration, Instant};

#[test]
fn a_revision_from_a_host_is_one_argument_never_code() {
    let h = Hosts::start(&[30]);
    let pwned = h.dir.path().join("PWNED");
    let seen = h.dir.path().join("seen");
    // The gate records the argument it got; the template quotes {revision} as users do.
    h.configure(
        "",
        &format!(
            "[health]\ncommand = \"sh -c 'printf %s \\\"$0\\\" > {}; echo OK' '{{revision}}'\"\n",
            seen.display()
        ),
    );
    h.write("v", "1");
    let r = h.run(&["deploy", "--revision", "release 42"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        std::fs::read_to_string(&seen).expect("gate ran"),
        "release 42"
    );
    let first = h.current(0).expect("current");
    h.write("v", "2");
    h.deploy_ok();
    // A compromised host rewrites the old release's REVISION; rollback gates on it.
    let hostile = format!("x$(id>{})'\"`touch {}`", pwned.display(), pwned.display());
    std::fs::write(
        h.deploy_to(0)
            .join("releases")
            .join(&first)
            .join("REVISION"),
        &hostile,
    )
    .expect("tamper");
    let r = h.run(&["rollback"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        std::fs::read_to_string(&seen).expect("gate ran"),
        hostile,
        "unchanged, whole"
    );
    assert!(!pwned.exists(), "the revision ran on the deploy machine");
}

#[test]
fn control_characters_from_a_host_are_shown_escaped() {
    let h = Hosts::start(&[31]);
    h.write("v", "1");
    h.deploy_ok();
    let release = h.current(0).expect("current");
    let dir = h.deploy_to(0);
    // A bad mark and a lock owner holding terminal escapes (clear screen, retitle).
    std::fs::create_dir_all(dir.join(".deploy/bad")).expect("mkdir");
    std::fs::write(
        dir.join(".deploy/bad").join(&release),
        "\u{1b}[2Jgone\u{1b}]0;owned\u{7}\n",
    )
    .expect("mark");
    let r = h.run(&["releases"]);
    assert!(
        !r.stdout.contains('\u{1b}') && !r.stderr.contains('\u{1b}'),
        "{r}"
    );
    assert!(r.stdout.contains("\\u{1b}[2Jgone"), "{r}");
    std::fs::remove_file(dir.join(".deploy/bad").join(&release)).expect("unmark");
    std::fs::create_dir_all(dir.join(".deploy/lock")).expect("lock");
    std::fs::write(dir.join(".deploy/lock/owner"), "\u{1b}[31mmallory\n").expect("owner");
    h.write("v", "2");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        !r.stderr.contains('\u{1b}') && r.stderr.contains("\\u{1b}[31mmallory"),
        "{r}"
    );
    std::fs::remove_dir_all(dir.join(".deploy/lock")).expect("unlock");
    // A REVISION with control characters is not a revision: the host is refused by name.
    std::fs::write(
        dir.join("releases").join(&release).join("REVISION"),
        "v\u{1b}[8m\n",
    )
    .expect("tamper");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains(&h.servers[0].addr) && r.stderr.contains("not trusted"),
        "{r}"
    );
    assert!(!r.stderr.contains('\u{1b}'), "{r}");
}

#[test]
fn a_hook_past_its_timeout_is_killed_on_the_host() {
    let h = Hosts::start(&[32]);
    let late = h.dir.path().join("late");
    h.configure(
        "",
        &format!(
            "[hooks]\nbefore_publish = [\"echo starting; sleep 8; touch '{}'\"]\n",
            late.display()
        ),
    );
    h.write("v", "1");
    let started = Instant::now();
    let r = h.run(&["--hook-timeout", "3", "deploy"]);
    let took = started.elapsed();
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("timed out after 3s"), "{r}");
    assert!(took < Duration::from_secs(7), "the deploy took {took:?}");
    assert!(!h.locked(0), "the lock is released like after any failure");
    std::thread::sleep(Duration::from_secs(7));
    assert!(!late.exists(), "the hook ran on after its timeout");
}

/// The deployer's peak resident memory while `args` runs, in KiB.
fn peak_kib(h: &Hosts, args: &[&str]) -> (u64, i32) {
    let mut child = common::spawn_deployer(&h.config, args);
    let mut peak = 0;
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{}/status", child.id())) {
            let hwm = s
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
                .unwrap_or(0);
            peak = peak.max(hwm);
        }
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (peak, status.code().unwrap_or(-1))
}

#[test]
fn a_hook_that_prints_without_end_costs_no_memory() {
    let h = Hosts::start(&[33]);
    h.configure(
        "",
        "[hooks]\nbefore_publish = [\"head -c 100000000 /dev/zero | tr -c x x; echo; echo the last words; exit 3\"]\n",
    );
    h.write("v", "1");
    let (peak, code) = peak_kib(&h, &["--hook-timeout", "120", "deploy"]);
    eprintln!("100 MB of hook output: the deployer peaked at {peak} KiB");
    assert_eq!(code, 1);
    assert!(
        peak < 64 * 1024,
        "the deployer peaked at {peak} KiB for 100 MB of output"
    );
    let log = h.log(0);
    let error = log.last().expect("log")["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("the last words"), "{error}");
    assert!(
        error.len() < 4096,
        "{} bytes recorded on the host",
        error.len()
    );
}

#[test]
fn host_keys_as_openssh_keeps_them() {
    let h = Hosts::start(&[34, 35, 36]);
    let known = h.dir.path().join("known_hosts");
    let lines = std::fs::read_to_string(&known).expect("known_hosts");
    let first: Vec<&str> = lines
        .lines()
        .find(|l| l.contains(&h.servers[0].ip))
        .expect("host 0's key")
        .split_whitespace()
        .collect();
    // The key of host 0 revoked: refused even though it is also listed as known.
    std::fs::write(
        &known,
        format!("@revoked * {} {}\n{lines}", first[1], first[2]),
    )
    .expect("revoke");
    let r = h.run(&["check"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("REVOKED") || r.stderr.contains("REVOKED"),
        "{r}"
    );
    // --accept-new-host-keys never adds a revoked key.
    std::fs::write(&known, format!("@revoked * {} {}\n", first[1], first[2])).expect("revoke");
    let r = h.run(&["--accept-new-host-keys", "check"]);
    assert_eq!(r.code, 1, "{r}");
    let after = std::fs::read_to_string(&known).expect("known_hosts");
    assert_eq!(
        after.matches(first[2]).count(),
        1,
        "the revoked key was added: {after}"
    );

    // Three runs at once adding keys: every key is kept, and so are comments and lines this
    // deployer does not understand.
    let kept = "# our fleet\n@cert-authority *.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIC8k\nsome line nobody understands\n";
    std::fs::write(&known, kept).expect("reset");
    let runs: Vec<_> = (0..3)
        .map(|_| common::spawn_deployer(&h.config, &["--accept-new-host-keys", "check"]))
        .collect();
    for run in runs {
        let out = run.wait_with_output();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let after = std::fs::read_to_string(&known).expect("known_hosts");
    assert!(after.starts_with(kept), "{after}");
    for s in &h.servers {
        assert_eq!(
            after.matches(&format!("[{}]:", s.ip)).count(),
            1,
            "{}: {after}",
            s.ip
        );
    }
    assert_eq!(h.run(&["check"]).code, 0, "every host now known");
}

/// The in-process gate takes check_jsonrpc's options (a bearer token from a file here): no
/// subprocess, and the token never reaches a host, even when the check fails.
#[test]
fn the_in_process_gate_sends_a_token_that_never_leaves_this_machine() {
    let h = Hosts::start(&[37]);
    let token = h.dir.path().join("usersvc.token");
    std::fs::write(&token, "s3cret-t0ken\n").expect("token");
    let svc = testbed::Usersvc::start_with(
        &testbed::usersvc::binary(),
        &[
            "--listen",
            "127.0.0.37:0",
            "--auth-token-file",
            token.to_str().expect("utf-8"),
        ],
    );
    let gate = |file: &str| {
        format!(
            "[health]\nurl = \"http://{{host}}:{}/\"\nmethod = \"version\"\nbearer_file = \"{file}\"\nexpect = ['/name=\"usersvc\"']\nretries = 1\ninterval = \"50ms\"\n",
            svc.addr().port()
        )
    };
    h.configure("", &gate("usersvc.token"));
    h.write("v", "1");
    h.deploy_ok();
    // A wrong token: the gate fails, every host goes back, and no host holds the token.
    let wrong = h.dir.path().join("wrong.token");
    std::fs::write(&wrong, "not-the-t0ken").expect("token");
    h.configure("", &gate("wrong.token"));
    h.write("v", "2");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("HTTP 401"), "{r}");
    let grep = std::process::Command::new("grep")
        .args(["-r", "-l", "-e", "t0ken", "-e", "wrong.token"])
        .arg(h.deploy_to(0))
        .output()
        .expect("grep");
    assert!(
        grep.stdout.is_empty(),
        "the secret reached the host: {}",
        String::from_utf8_lossy(&grep.stdout)
    );
    // A typo in an option is refused before anything is sent.
    h.configure(
        "",
        "[health]\nurl = \"http://{host}:1/\"\nvalue_warning = \"10:5\"\n",
    );
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stderr.contains("[health]"), "{r}");
}
