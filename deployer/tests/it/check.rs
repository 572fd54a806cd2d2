//! `deployer check` against real OpenSSH servers on 127.0.0.2 and 127.0.0.3.

use crate::common;

use common::Hosts;

#[test]
fn checks_every_host_with_strict_host_keys() {
    let mut h = Hosts::start(&[2, 3]);
    // A deploy_to with a space and a quote: every remote path must be quoted.
    h.awkward_deploy_dirs();
    let da = h.deploy_to(0).to_owned();
    std::fs::create_dir_all(&da).expect("mkdir");
    let (a, b) = (&h.servers[0], &h.servers[1]);

    let r = h.run(&["check"]);
    assert_eq!(r.code, 0, "{r}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("HOST"), "{r}");
    assert!(
        lines[1].contains(&a.addr)
            && lines[1].contains("my app's home")
            && lines[1].ends_with("ok"),
        "{r}"
    );
    assert!(
        lines[2].contains(&b.addr) && lines[2].contains(" no ") && lines[2].ends_with("ok"),
        "missing dir, parent writable: {r}"
    );

    // A held lock is reported with its owner, and fails the check.
    std::fs::create_dir_all(da.join(".deploy/lock")).expect("lock");
    std::fs::write(
        da.join(".deploy/lock/owner"),
        "alice pid 42 at 2026-11-23T10:00:00Z",
    )
    .expect("owner");
    let r = h.run(&["check"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stdout.contains("locked by another deploy: alice pid 42"),
        "{r}"
    );
    // --hosts selects
    let r = h.run(&["check", "--hosts", &b.addr]);
    assert_eq!(r.code, 0, "{r}");
    assert!(!r.stdout.contains(&a.addr));
}

#[test]
fn unknown_and_changed_host_keys_are_refused() {
    let mut h = Hosts::start(&[4]);
    h.write("a.txt", "a");
    let known = h.dir.path().join("known_hosts");
    // Unknown: empty known_hosts. Neither check nor deploy goes on.
    std::fs::write(&known, "").expect("empty");
    let r = h.run(&["check"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("is unknown (SHA256:"), "{r}");
    let r = h.run(&["deploy"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(
        r.stderr.contains("at connect") && r.stderr.contains("is unknown (SHA256:"),
        "{r}"
    );
    assert!(!h.deploy_to(0).exists());
    // Opt-in: accepted and remembered.
    let r = h.run(&["check", "--accept-new-host-keys"]);
    assert_eq!(r.code, 0, "{r}");
    let r = h.run(&["check"]);
    assert_eq!(
        r.code, 0,
        "the accepted key was written to known_hosts: {r}"
    );
    // Changed: refused even with --accept-new-host-keys.
    h.servers[0].change_host_key();
    for extra in [&[][..], &["--accept-new-host-keys"][..]] {
        for cmd in ["check", "deploy"] {
            let mut args = vec![cmd];
            args.extend_from_slice(extra);
            let r = h.run(&args);
            assert_eq!(r.code, 1, "{r}");
            assert!(r.stdout.contains("HAS CHANGED (now SHA256:"), "{r}");
        }
    }
    assert!(!h.deploy_to(0).exists());
    // A host that is down is named.
    h.servers[0].kill();
    let r = h.run(&["check", "--timeout", "2"]);
    assert_eq!(r.code, 1, "{r}");
    assert!(r.stdout.contains("cannot connect"), "{r}");
    // Every duration flag takes the same forms: `30s` was "invalid digit found in string".
    let r = h.run(&["check", "--timeout", "1500ms", "--hook-timeout", "5m"]);
    assert!(r.stdout.contains("cannot connect"), "{r}");
    let r = h.run(&["check", "--timeout", "soon"]);
    assert_eq!(r.code, 2, "{r}");
    assert!(r.stderr.contains("write it like 500ms, 30s, 1m"), "{r}");
}

/// A missing config prints as a CLI should: one message and what to do, no "Caused by:", no
/// backtrace even with RUST_BACKTRACE set.
#[test]
fn missing_config_is_one_message_and_a_hint() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deployer"))
        .args(["-c", "/nonexistent/deploy.toml", "check"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run deployer");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            "deployer: cannot read /nonexistent/deploy.toml: No such file or directory (os error 2)",
            "fix the deploy configuration"
        ],
        "{err}"
    );
}

/// A key that cannot be used is named, with whether the agent was tried: "[Session(-16)] Unable
/// to open private key file" said neither which file nor what else was tried.
#[test]
fn a_missing_key_file_is_named_with_the_agent_fallback() {
    let h = Hosts::start(&[4]);
    let text = std::fs::read_to_string(&h.config).expect("config");
    let key = h.servers[0].identity.display().to_string();
    let missing = h.dir.path().join("no_such_key");
    std::fs::write(
        &h.config,
        text.replace(&key, &missing.display().to_string()),
    )
    .expect("config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deployer"))
        .arg("-c")
        .arg(&h.config)
        .arg("check")
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run deployer");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "the key file {} cannot be read",
            missing.display()
        )) && stdout.contains("no SSH agent to try (SSH_AUTH_SOCK is not set)"),
        "{stdout}"
    );
}
