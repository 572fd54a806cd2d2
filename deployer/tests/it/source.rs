//! What travels: a source in a git work tree (named by the full commit SHA, refused while it has
//! uncommitted changes unless `--allow-dirty`), a commit's version of it (`--ref`, through
//! `git archive`), and never `.git` or what `exclude` names.

use crate::common;

use common::Hosts;
use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
        .args(args)
        .output()
        .expect("git (apt-get install git; make test does)");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn current_file(h: &Hosts, path: &str) -> Option<String> {
    std::fs::read_to_string(h.deploy_to(0).join("current").join(path)).ok()
}

#[test]
fn deploys_commits_refuses_a_dirty_tree_and_never_sends_git_or_excluded_paths() {
    let h = Hosts::start(&[43]);
    // The source directory is a repository of its own.
    git(&h.source, &["init", "-q", "-b", "main"]);
    h.write("app.txt", "v1\n");
    h.write("secret.txt", "kept out of archives\n");
    h.write(".gitattributes", "secret.txt export-ignore\n");
    h.write("debug.log", "excluded by deploy.toml\n");
    git(&h.source, &["add", "-A"]);
    git(&h.source, &["commit", "-q", "-m", "v1"]);
    git(&h.source, &["tag", "v1"]);
    let v1 = git(&h.source, &["rev-parse", "HEAD"]);
    h.write("app.txt", "v2\n");
    git(&h.source, &["commit", "-q", "-am", "v2"]);
    let v2 = git(&h.source, &["rev-parse", "HEAD"]);
    h.configure("exclude = [\"*.log\"]", "");

    // A clean work tree: HEAD's full SHA; .git and excluded paths stay here.
    h.deploy_ok();
    assert_eq!(h.revision(0), v2);
    assert_eq!(current_file(&h, "app.txt").as_deref(), Some("v2\n"));
    assert!(current_file(&h, "secret.txt").is_some());
    assert!(
        !h.deploy_to(0).join("current/.git").exists(),
        ".git travelled"
    );
    assert!(
        current_file(&h, "debug.log").is_none(),
        "an excluded file travelled"
    );
    assert!(
        h.revisions_log(0)[0].starts_with(&format!("Branch main (at {v2}) deployed as release ")),
        "{:?}",
        h.revisions_log(0)
    );

    // Uncommitted changes: refused, naming them; nothing reaches the host.
    h.write("app.txt", "v3, in no commit\n");
    h.write("new.txt", "untracked\n");
    let before = h.releases(0);
    let r = h.run(&["deploy"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(
        r.stderr.contains("app.txt")
            && r.stderr.contains("new.txt")
            && r.stderr.contains("--allow-dirty"),
        "{r}"
    );
    assert_eq!(h.releases(0), before);
    // Nor does a host that never answers hold the refusal up: the hosts are connected to while
    // the tree is read, and a refused tree is said without waiting for them.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = silent.local_addr().expect("addr");
    std::thread::spawn(move || silent.incoming().collect::<Vec<_>>());
    let entry = format!("[[hosts]]\naddress = \"{addr}\"\ndeploy_to = \"/srv/none\"\n");
    h.configure("exclude = [\"*.log\"]", &entry);
    let t = std::time::Instant::now();
    let r = h.run(&["--timeout", "60", "deploy"]);
    assert!(r.code != 0 && r.stderr.contains("--allow-dirty"), "{r}");
    // A bound on liveness, not a speed figure: the silent host alone takes the 60 s timeout.
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "{r}");
    h.configure("exclude = [\"*.log\"]", "");
    let r = h.run(&["deploy", "--allow-dirty"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(h.revision(0), format!("{v2}-dirty"));
    assert_eq!(
        current_file(&h, "app.txt").as_deref(),
        Some("v3, in no commit\n")
    );

    // --ref: that commit's tree whatever the work tree holds, export-ignore honoured.
    let r = h.run(&["deploy", "--ref", "v1"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(h.revision(0), v1);
    assert_eq!(current_file(&h, "app.txt").as_deref(), Some("v1\n"));
    assert!(current_file(&h, "secret.txt").is_none(), "export-ignore");
    assert!(current_file(&h, "new.txt").is_none(), "not in the commit");
    assert!(current_file(&h, "debug.log").is_none(), "excluded");
    assert!(
        h.revisions_log(0)
            .last()
            .is_some_and(|l| l.starts_with(&format!("Branch v1 (at {v1}) deployed"))),
        "{:?}",
        h.revisions_log(0)
    );
    let r = h.run(&["deploy", "--ref", "no-such-tag"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(
        r.stderr.contains("--ref no-such-tag") && r.stderr.contains("no such commit"),
        "{r}"
    );
}
