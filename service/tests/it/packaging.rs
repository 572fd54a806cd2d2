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

/// The shipped example config works wherever the deployer puts `shared/`: every path in it is
/// relative to the file, so a `deploy_to` other than /srv/usersvc needs no edit. It is used as
/// README's "Ship it" makes each host's copy (token enabled, listening beyond loopback) and
/// started as the deploy hook starts it, from another working directory.
#[test]
fn the_example_config_keeps_its_files_beside_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shared = dir.path().join("elsewhere/shared");
    std::fs::create_dir_all(&shared).expect("mkdir");
    let port = testbed::process::free_port("127.0.0.1");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/usersvc.toml"),
    )
    .expect("read packaging/usersvc.toml");
    assert!(!example.contains("/srv/"), "absolute paths in:\n{example}");
    let config = example
        .replace("# auth_token_file = ", "auth_token_file = ")
        .replace("127.0.0.1:8080", &format!("0.0.0.0:{port}"));
    assert_ne!(config, example, "README's edits no longer apply");
    std::fs::write(shared.join("usersvc.toml"), config).expect("write config");
    std::fs::write(shared.join("usersvc.token"), "s3cret\n").expect("write token");
    let usersvc = |args: &[&str]| {
        testbed::process::checked(
            "usersvc",
            Command::new(env!("CARGO_BIN_EXE_usersvc"))
                .arg("--config")
                .arg(shared.join("usersvc.toml"))
                .args(args)
                .current_dir(dir.path())
                .output(),
        )
    };
    let started = usersvc(&["upgrade", "--start"]);
    let pid_file = shared.join("usersvc.pid");
    let pid: Option<u32> = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse().ok());
    // Whatever the assertions below say, the detached server goes.
    let _stop = kill_on_drop(pid);
    assert!(
        started.status.success(),
        "upgrade --start: {}",
        String::from_utf8_lossy(&started.stderr)
    );
    let agent = testbed::http::agent();
    let url = format!("http://127.0.0.1:{port}/");
    let body = br#"{"jsonrpc":"2.0","method":"put_user","params":{"user":{"id":"ann"}},"id":1}"#;
    let refused = testbed::http::post(&agent, &url, &[("content-type", "application/json")], body);
    assert_eq!(refused.status, 401, "the token file was read");
    let answer = testbed::http::post(
        &agent,
        &url,
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer s3cret"),
        ],
        body,
    );
    assert_eq!(answer.json()["result"]["rev"], 1, "{}", answer.text());
    for file in [
        "usersvc.db",
        "usersvc.journal",
        "usersvc.pid",
        "usersvc.log",
    ] {
        assert!(shared.join(file).exists(), "{file} is not in shared/");
    }
    let strays: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|n| n != "elsewhere")
        .collect();
    assert!(
        strays.is_empty(),
        "files left in the working directory: {strays:?}"
    );
}

/// Kills the detached server when dropped.
fn kill_on_drop(pid: Option<u32>) -> impl Drop {
    struct Kill(Option<u32>);
    impl Drop for Kill {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                testbed::process::signal(pid, 9);
            }
        }
    }
    Kill(pid)
}

/// `make install` (as a package build runs it: PREFIX and DESTDIR) installs the four tools,
/// their man pages and their completions, and each works from where it lands: the binaries
/// run, `man` renders the pages, bash and fish complete a subcommand or flag from the
/// installed scripts, and zsh parses its own.
#[test]
fn make_install_puts_tools_pages_and_completions_where_they_are_looked_for() {
    let dest = tempfile::tempdir().expect("temp dir");
    let out = testbed::process::checked(
        "make install",
        testbed::process::make()
            .args(["-s", "install", "PROFILE=dev", "PREFIX=/usr"])
            .arg(format!("DESTDIR={}", dest.path().display()))
            .current_dir(testbed::workspace_root())
            .output(),
    );
    assert!(
        out.status.success(),
        "make install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let usr = dest.path().join("usr");
    // (tool, a subcommand or flag it has, what a user types of it)
    let tools = [
        ("usersvc", "import", "imp"),
        ("check_jsonrpc", "--expect-type", "--expect-t"),
        ("deployer", "deploy", "depl"),
        ("riemann-probe", "watch", "wat"),
    ];
    for (tool, word, typed) in tools {
        let bin = usr.join("bin").join(tool);
        // (check_jsonrpc exits 3 after --version, as the plugin guidelines ask)
        let version = Command::new(&bin).arg("--version").output().expect("run");
        let version = String::from_utf8_lossy(&version.stdout);
        assert!(version.contains("0.1.0"), "{tool} --version: {version}");
        let page = usr.join(format!("share/man/man1/{tool}.1"));
        let shown = run_ok(
            Command::new("man")
                .arg("-l")
                .arg(&page)
                .env("MANPAGER", "cat"),
        );
        assert!(shown.contains(word), "man {tool} has no {word}:\n{shown}");

        let bash = usr.join(format!("share/bash-completion/completions/{tool}"));
        let script = format!(
            "source '{}'; f=$(complete -p {tool} | sed -E 's/.*-F ([^ ]+).*/\\1/'); COMP_WORDS=({tool} {typed}); COMP_CWORD=1; COMP_LINE='{tool} {typed}'; COMP_POINT=${{#COMP_LINE}}; \"$f\" {tool} {typed} {tool}; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            bash.display()
        );
        let completed = run_ok(Command::new("bash").arg("-c").arg(script));
        assert!(
            completed.lines().any(|l| l.trim() == word),
            "bash completes {tool} {typed} to {completed:?}"
        );
        let fish = usr.join(format!("share/fish/vendor_completions.d/{tool}.fish"));
        let completed = run_ok(
            Command::new("fish")
                .arg("--no-config")
                .arg("-c")
                .arg(format!(
                    "source '{}'; complete -C '{tool} {typed}'",
                    fish.display()
                )),
        );
        assert!(
            completed
                .lines()
                .any(|l| l.split('\t').next() == Some(word)),
            "fish completes {tool} {typed} to {completed:?}"
        );
        let zsh = usr.join(format!("share/zsh/site-functions/_{tool}"));
        run_ok(Command::new("zsh").arg("-n").arg(&zsh));
    }
}

/// Runs `cmd`, insisting it exits 0 (its peer missing: the install step is named); its stdout.
fn run_ok(cmd: &mut Command) -> String {
    let what = format!("{cmd:?} (zsh, fish and man are test peers: `make peers` installs them)");
    let out = testbed::process::checked(&what, cmd.output());
    String::from_utf8_lossy(&out.stdout).into_owned()
}
