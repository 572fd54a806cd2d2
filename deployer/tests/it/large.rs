//! An application of 20,000 files, as users bring: the host's state (layout, current release,
//! its manifest) must arrive whole whatever the tree's size, or nothing is decided from it.
//! The listing of such a tree is ~3 MB, far over what a hook's output keeps.

use crate::common;

use common::Hosts;

const FILES: usize = 20_000;

/// 20,000 small files in 100 directories.
fn big_tree(h: &Hosts) {
    for d in 0..100 {
        let dir = h.source.join(format!("dir{d:03}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for f in 0..FILES / 100 {
            std::fs::write(dir.join(format!("file{f:03}.txt")), format!("{d} {f}\n"))
                .expect("write");
        }
    }
}

/// The row of host `i` in a deploy's table.
fn row<'a>(h: &Hosts, r: &'a common::Run, i: usize) -> &'a str {
    r.stdout
        .lines()
        .find(|l| l.starts_with(&h.servers[i].addr))
        .unwrap_or_else(|| panic!("no row for host {i}:\n{r}"))
}

#[test]
fn a_tree_of_20000_files_deploys_incrementally_and_fails_back_to_the_live_release() {
    let h = Hosts::start(&[41, 42]);
    big_tree(&h);
    // The hook records $PREVIOUS_RELEASE; it fails on a host holding a `fail-after` mark.
    h.configure(
        "keep_releases = 2",
        "[hooks]\nafter_publish = [\"echo \\\"$PREVIOUS_RELEASE\\\" > \\\"$DEPLOY_TO/previous.$RELEASE\\\"; test ! -e \\\"$DEPLOY_TO/fail-after\\\"\"]\n",
    );
    let r = h.deploy_ok();
    assert!(row(&h, &r, 0).contains(&format!(" {FILES} files")), "{r}");
    let first = h.current(0).expect("current");

    // One file changed: only it travels, the rest are hard links, on every host.
    h.write("dir042/file007.txt", "changed\n");
    let plan = h.run(&["deploy", "--dry-run"]);
    assert_eq!(plan.code, 0, "{plan}");
    assert!(
        plan.stdout.contains(&first) && plan.stdout.contains(&format!("{} files", FILES - 1)),
        "the plan sees the current release and what it holds:\n{plan}"
    );
    let r = h.deploy_ok();
    let second = h.current(0).expect("current");
    for i in 0..2 {
        let line = row(&h, &r, i);
        assert!(
            line.contains(" 1 files") && line.contains(&format!(" {} files", FILES - 1)),
            "sent 1, linked {}:\n{r}",
            FILES - 1
        );
        let previous = h.deploy_to(i).join(format!("previous.{second}"));
        assert_eq!(
            std::fs::read_to_string(&previous).expect("hook ran").trim(),
            first,
            "$PREVIOUS_RELEASE"
        );
    }

    // The unchanged files are the live release's (same inode), linked from a list of names
    // (no staged file stays behind); the changed one is new.
    for i in 0..2 {
        let ino = |release: &str, path: &str| {
            let p = h.deploy_to(i).join("releases").join(release).join(path);
            std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&p).expect("file"))
        };
        assert_eq!(
            ino(&first, "dir099/file199.txt"),
            ino(&second, "dir099/file199.txt")
        );
        assert_ne!(
            ino(&first, "dir042/file007.txt"),
            ino(&second, "dir042/file007.txt")
        );
        let dot = h.deploy_to(i).join(".deploy");
        assert!(
            dot.join("manifests").join(&second).is_file(),
            "host {i}: manifest"
        );
        let left = std::fs::read_dir(&dot).expect(".deploy").flatten();
        let staged = left.filter(|e| e.file_name().to_string_lossy().starts_with("staged-"));
        assert_eq!(staged.count(), 0, "host {i}: staged files left");
    }

    // The second release's manifest was made on each host from the first's (its lines for the
    // linked files kept, the changed file's sent): the next deploy links from it all the same.
    for i in 0..2 {
        let m = h.deploy_to(i).join(".deploy/manifests").join(&second);
        let text = std::fs::read_to_string(&m).expect("manifest");
        let lines = text.lines().count();
        assert_eq!(
            lines,
            FILES + 100,
            "host {i}: a line a file and a directory"
        );
        // Made, not sent: the live lines kept, then the lines sent (the directories' and the
        // changed file's, dir099's last); a manifest sent whole ends with dir099/file199.txt.
        let last = text.lines().last().unwrap_or_default();
        assert!(
            last.starts_with("{\"path\":\"dir099\",\"type\":\"dir\""),
            "host {i}: {last}"
        );
    }
    // Cleanup keeps keep_releases.
    h.write("dir001/file001.txt", "changed again\n");
    let r = h.deploy_ok();
    for i in 0..2 {
        let line = row(&h, &r, i);
        assert!(
            line.contains(" 1 files") && line.contains(&format!(" {} files", FILES - 1)),
            "sent 1, linked {} from the manifest made on the host:\n{r}",
            FILES - 1
        );
    }
    let third = h.current(0).expect("current");
    for i in 0..2 {
        assert_eq!(h.releases(i), [second.clone(), third.clone()], "host {i}");
    }

    // A failing after_publish hook on one host: every host goes back to the live release.
    std::fs::write(h.deploy_to(1).join("fail-after"), "").expect("mark");
    h.write("dir002/file002.txt", "bad\n");
    let r = h.run(&["deploy"]);
    assert_ne!(r.code, 0, "{r}");
    assert!(r.stdout.contains(&format!("rolled back to {third}")), "{r}");
    for i in 0..2 {
        assert_eq!(
            h.current(i).as_deref(),
            Some(third.as_str()),
            "host {i}: {r}"
        );
        assert!(h.deploy_to(i).join("current/REVISION").is_file());
    }
    std::fs::remove_file(h.deploy_to(1).join("fail-after")).expect("unmark");

    // A failing health gate: the same.
    h.configure(
        "keep_releases = 2",
        "[health]\ncommand = \"sh -c 'echo CRITICAL - down; exit 2'\"\nretries = 1\ninterval = \"50ms\"\n",
    );
    let r = h.run(&["deploy"]);
    assert_ne!(r.code, 0, "{r}");
    for i in 0..2 {
        assert_eq!(
            h.current(i).as_deref(),
            Some(third.as_str()),
            "host {i}: {r}"
        );
    }
    let r = h.run(&["releases"]);
    assert!(
        r.stdout.contains(&third) && !r.stdout.contains("WARNING"),
        "{r}"
    );
}
