//! The deployer and Capistrano 3 (Debian's) on the same host, each following the other: the
//! layout, `current`, `revisions.log` and REVISION as Capistrano writes and reads them.

use crate::common;

use common::Hosts;
use std::os::unix::fs::MetadataExt;
use testbed::capistrano::Capistrano;

/// The file Capistrano's and the deployer's releases share (same content, same mode).
const BIG: &str = "unchanged between the releases\n";

fn ino(p: &std::path::Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .ino()
}

#[test]
fn takes_over_a_capistrano_host_and_capistrano_can_follow() {
    let h = Hosts::start(&[31]);
    let deploy_to = h.deploy_to(0).to_owned();
    // keep_releases = 2 for cap: its cleanup then has a release to remove, which is current.
    let cap = Capistrano::new(
        &[&h.servers[0]],
        &deploy_to,
        2,
        &[("lib/big.txt", &BIG.repeat(100)), ("app.txt", "cap 1\n")],
    );
    let ran = cap.cap(&["deploy"]);
    assert!(ran.ok, "cap deploy:\n{}", ran.output);
    let cap1 = h.current(0).expect("cap's current");
    let sha2 = cap.commit(&[("app.txt", "cap 2\n")], "second");
    // Release names have whole seconds: two deploys in one second would collide for cap.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let ran = cap.cap(&["deploy"]);
    assert!(ran.ok, "cap deploy:\n{}", ran.output);
    let cap2 = h.current(0).expect("cap's current");
    assert_ne!(cap1, cap2);
    assert_eq!(h.revision(0), sha2, "Capistrano writes the full SHA");

    // The deployer deploys on top: unchanged files are hard-linked from Capistrano's release,
    // hashed on the host (it has no manifest of ours).
    h.write("lib/big.txt", &BIG.repeat(100));
    h.write("app.txt", "deployer\n");
    // Same mode too: Capistrano extracts `git archive`, whose files are 0664 when extracted as
    // root (git's tar.umask), 0644 under a deploy user's usual umask.
    let cap_mode = std::fs::metadata(deploy_to.join("current/lib/big.txt"))
        .expect("cap's file")
        .mode();
    std::fs::set_permissions(
        h.source.join("lib/big.txt"),
        std::os::unix::fs::PermissionsExt::from_mode(cap_mode & 0o7777),
    )
    .expect("chmod");
    let r = h.deploy_ok();
    let ours = h.current(0).expect("current");
    assert!(ours > cap2, "{r}");
    let row = r
        .stdout
        .lines()
        .find(|l| l.starts_with(&h.servers[0].addr))
        .expect("row");
    assert!(row.contains(" 1 files"), "only app.txt is sent:\n{r}");
    let release = |name: &str| deploy_to.join("releases").join(name);
    assert_eq!(
        ino(&release(&cap2).join("lib/big.txt")),
        ino(&release(&ours).join("lib/big.txt"))
    );
    assert_eq!(
        std::fs::read_link(deploy_to.join("current")).expect("current"),
        release(&ours),
        "current is absolute, as Capistrano writes it"
    );
    let log = h.revisions_log(0);
    assert_eq!(log.len(), 3, "{log:?}");
    assert!(
        log[2].starts_with("Branch none (at ")
            && log[2].ends_with(&format!(
                "deployed as release {ours} by {}",
                h.servers[0].user
            )),
        "Capistrano's line: {log:?}"
    );
    assert_eq!(
        h.log(0)[0]["outcome"],
        "deployed",
        ".deploy/log has the detail"
    );

    // Back to Capistrano's oldest release with the deployer: cap's cleanup (keep 2) would remove
    // it, but it is current, which cap only sees when `current` is absolute.
    let r = h.run(&["rollback", "--to", &cap1]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(
        h.revisions_log(0).last().map(String::as_str),
        Some(format!("{} rolled back to release {cap1}", h.servers[0].user).as_str())
    );
    let ran = cap.cap(&["deploy:cleanup"]);
    assert!(ran.ok, "cap deploy:cleanup:\n{}", ran.output);
    assert!(
        release(&cap1).join("app.txt").is_file(),
        "cap deploy:cleanup deleted the live release:\n{}",
        ran.output
    );
    assert_eq!(h.current(0).as_deref(), Some(cap1.as_str()));
    let r = h.run(&["releases"]);
    assert_eq!(r.code, 0, "{r}");
    assert!(!r.stdout.contains("WARNING"), "{r}");

    // cap deploy:rollback goes to the second newest release (by time), as it always does.
    let ran = cap.cap(&["deploy:rollback"]);
    assert!(ran.ok, "cap deploy:rollback:\n{}", ran.output);
    assert_eq!(
        h.current(0).as_deref(),
        Some(cap2.as_str()),
        "{}",
        ran.output
    );
    assert!(std::fs::read_to_string(deploy_to.join("current/app.txt")).expect("app") == "cap 2\n");

    // And Capistrano deploys after the deployer, then the deployer after it again.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let ran = cap.cap(&["deploy"]);
    assert!(ran.ok, "cap deploy after the deployer:\n{}", ran.output);
    let r = h.deploy_ok();
    assert!(r.stdout.contains("published"), "{r}");
    assert_eq!(
        std::fs::read_to_string(deploy_to.join("current/app.txt")).expect("app"),
        "deployer\n"
    );
}

#[test]
fn a_missing_shared_file_stops_check_and_deploy_before_anything_is_staged() {
    let h = Hosts::start(&[32]);
    h.write("app.txt", "v1\n");
    h.write("config.toml", "from the release\n");
    h.configure("shared_files = [\"config.toml\"]", "");
    let r = h.run(&["check"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(
        r.stdout.contains("config.toml") && r.stdout.contains("missing"),
        "check names the file:\n{r}"
    );
    let r = h.run(&["deploy"]);
    assert_ne!(r.code, 0, "{r}");
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(
        said.contains(&h.servers[0].addr) && said.contains("config.toml"),
        "names the host and the file:\n{r}"
    );
    assert!(
        h.releases(0).is_empty(),
        "nothing staged: {:?}",
        h.releases(0)
    );
    assert!(
        !h.deploy_to(0).join("shared/config.toml").exists(),
        "no empty file made"
    );
    assert!(!h.locked(0));

    // Put there by the operator: the deploy goes on and links it.
    std::fs::write(
        h.deploy_to(0).join("shared/config.toml"),
        "the host's own\n",
    )
    .expect("write");
    assert_eq!(h.run(&["check"]).code, 0);
    h.deploy_ok();
    assert_eq!(
        std::fs::read_to_string(h.deploy_to(0).join("current/config.toml")).expect("shared"),
        "the host's own\n"
    );

    // Seeded, explicitly: the release's copy the first time, on a host that has none.
    std::fs::remove_file(h.deploy_to(0).join("shared/config.toml")).expect("rm");
    h.configure(
        "shared_files = [{ path = \"config.toml\", seed = true }]",
        "",
    );
    h.deploy_ok();
    assert_eq!(
        std::fs::read_to_string(h.deploy_to(0).join("current/config.toml")).expect("seeded"),
        "from the release\n"
    );
}
