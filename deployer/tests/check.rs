//! `deployer check` against real OpenSSH servers on 127.0.0.2 and 127.0.0.3.

mod common;

use common::deployer;
use std::path::Path;
use testbed::sshd::Sshd;

#[test]
fn checks_every_host_with_strict_host_keys() {
    let a = Sshd::start(2);
    let b = Sshd::start(3);
    // Both servers accept the first one's key.
    let key = std::fs::read_to_string(a.identity.with_extension("pub")).expect("pub key");
    let b_auth = b.known_hosts.with_file_name("authorized_keys");
    std::fs::write(&b_auth, key).expect("authorize");
    let dir = tempfile::tempdir().expect("dir");
    // A deploy_to with a space and a quote: every remote path must be quoted.
    let da = a.deploy_root.join("it's here").display().to_string();
    let db = b.deploy_root.join("app").display().to_string();
    std::fs::create_dir_all(&da).expect("mkdir");
    let cfg = write_config(dir.path(), &[&a, &b], &[da.clone(), db.clone()]);

    let r = deployer(&cfg, &["check"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines[0].starts_with("HOST"), "{}", r.stdout);
    assert!(
        lines[1].contains(&a.addr) && lines[1].contains("it's here") && lines[1].ends_with("ok"),
        "{}",
        r.stdout
    );
    assert!(
        lines[2].contains(&b.addr) && lines[2].contains(" no ") && lines[2].ends_with("ok"),
        "missing dir, parent writable: {}",
        r.stdout
    );

    // A held lock is reported with its owner, and fails the check.
    std::fs::create_dir_all(Path::new(&da).join(".deploy/lock")).expect("lock");
    std::fs::write(
        Path::new(&da).join(".deploy/lock/owner"),
        "alice pid 42 at 2026-11-23T10:00:00Z",
    )
    .expect("owner");
    let r = deployer(&cfg, &["check"]);
    assert_eq!(r.code, 1, "{}", r.stdout);
    assert!(
        r.stdout.contains("locked by another deploy: alice pid 42"),
        "{}",
        r.stdout
    );
    // --hosts selects
    let r = deployer(&cfg, &["check", "--hosts", &b.addr]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains(&a.addr));
}

#[test]
fn unknown_and_changed_host_keys_are_refused() {
    let mut a = Sshd::start(4);
    let dir = tempfile::tempdir().expect("dir");
    let d = a.deploy_root.display().to_string();
    let cfg = write_config(dir.path(), &[&a], &[d]);
    // Unknown: empty known_hosts.
    std::fs::write(dir.path().join("known_hosts"), "").expect("empty");
    let r = deployer(&cfg, &["check"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("is unknown (SHA256:"), "{}", r.stdout);
    // Opt-in: accepted and remembered.
    let r = deployer(&cfg, &["check", "--accept-new-host-keys"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = deployer(&cfg, &["check"]);
    assert_eq!(
        r.code, 0,
        "the accepted key was written to known_hosts: {}",
        r.stdout
    );
    // Changed: refused even with --accept-new-host-keys.
    a.change_host_key();
    for extra in [&[][..], &["--accept-new-host-keys"][..]] {
        let mut args = vec!["check"];
        args.extend_from_slice(extra);
        let r = deployer(&cfg, &args);
        assert_eq!(r.code, 1);
        assert!(
            r.stdout.contains("HAS CHANGED (now SHA256:"),
            "{}",
            r.stdout
        );
    }
    // A host that is down is named.
    a.kill();
    let r = deployer(&cfg, &["check", "--timeout", "2"]);
    assert_eq!(r.code, 1);
    assert!(r.stdout.contains("cannot connect"), "{}", r.stdout);
}
