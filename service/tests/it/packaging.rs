//! The shipped systemd units, checked by systemd itself: `systemd-analyze verify` parses them
//! offline and names unknown keys, bad values and missing executables. The units are laid on a
//! temporary deploy_to whose current/bin/usersvc is the binary under test, so nothing may be
//! reported at all.

use std::path::Path;
use std::process::Command;

fn verify(dir: &Path, units: &[&str]) -> (bool, String) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.iter().map(|u| dir.join(u)))
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "systemd-analyze not runnable ({e}): install the test peers with `make peers` (Debian package systemd)"
            )
        });
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let deploy_to = dir.path().join("srv");
    std::fs::create_dir_all(deploy_to.join("current/bin")).expect("mkdir");
    std::fs::create_dir_all(deploy_to.join("shared")).expect("mkdir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_usersvc"),
        deploy_to.join("current/bin/usersvc"),
    )
    .expect("link");
    std::os::unix::fs::symlink(
        testbed::process::workspace_bin("riemann-probe", "riemann-probe"),
        deploy_to.join("current/bin/riemann-probe"),
    )
    .expect("link");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let units = [
        "usersvc.socket",
        "usersvc.service",
        "riemann-probe-health.service",
    ];
    for unit in units {
        let text = std::fs::read_to_string(shipped.join(unit)).expect("read unit");
        std::fs::write(
            dir.path().join(unit),
            text.replace("/srv/usersvc", &deploy_to.display().to_string()),
        )
        .expect("write unit");
    }
    let (ok, said) = verify(dir.path(), &units);
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );

    let service = std::fs::read_to_string(dir.path().join("usersvc.service")).expect("read");
    for line in [
        "Type=notify",
        "ExecReload=",
        "current/bin/usersvc --config",
        "shared/usersvc.toml",
    ] {
        assert!(service.contains(line), "usersvc.service lacks {line:?}");
    }
    let health =
        std::fs::read_to_string(dir.path().join("riemann-probe-health.service")).expect("read");
    assert!(
        health.contains("current/bin/riemann-probe watch --interval 10s --health"),
        "{health}"
    );
    let socket = std::fs::read_to_string(dir.path().join("usersvc.socket")).expect("read");
    assert!(socket.contains("ListenStream=8080"));

    // The check has teeth: a misspelt key is reported.
    std::fs::write(
        dir.path().join("typo.service"),
        service.replace("Type=notify", "Typ=notify"),
    )
    .expect("write");
    let (_, said) = verify(dir.path(), &["typo.service"]);
    assert!(said.contains("Unknown key 'Typ'"), "{said}");
}

/// The unit keeps usersvc's files private and is hardened: `systemd-analyze security` (offline,
/// on the shipped file) scores its exposure at most 2.0 ("OK"; 10 is an unconfined service).
#[test]
fn the_service_unit_is_private_and_hardened() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd/usersvc.service");
    let text = std::fs::read_to_string(&unit).expect("read unit");
    for line in [
        "UMask=0077",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "usersvc.service lacks {line}"
        );
    }
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze (make peers installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    let score: f64 = said
        .lines()
        .find_map(|l| l.split("exposure level for usersvc.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in:\n{said}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(score <= 2.0, "exposure {score} (want at most 2.0):\n{said}");
}

/// What `make run` leaves in the checkout (usersvc with its defaults, started and stopped in the
/// workspace root) is all covered by the repository's `.gitignore`: `git status` stays clean.
#[test]
fn running_with_the_defaults_leaves_the_checkout_clean() {
    let repo = tempfile::tempdir().expect("temp dir");
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(repo.path())
            .output()
            .expect("git (a test peer)");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    git(&["init", "-q"]);
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.gitignore"),
        repo.path().join(".gitignore"),
    )
    .expect("copy .gitignore");
    git(&["add", ".gitignore"]);
    git(&[
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "-qm",
        "ignore",
    ]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_usersvc"))
        .args(["--listen", "127.0.0.1:0", "--log", "off"])
        .current_dir(repo.path())
        .spawn()
        .expect("usersvc");
    let copy = repo.path().join("usersvc.snapshot");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !copy.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "usersvc never saved its copy"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        testbed::process::signal(child.id(), 15),
        "usersvc died early"
    );
    let status = child.wait().expect("wait for usersvc");
    assert!(status.success(), "SIGTERM ends usersvc with 0: {status}");
    let left = git(&["status", "--porcelain", "--ignored=no"]);
    assert!(left.trim().is_empty(), "left untracked: {left}");
    assert!(
        repo.path().join("usersvc.db").exists(),
        "it did run in that directory"
    );
}
