//! A host's live manifest known by its SHA-256: the deployer keeps copies of the manifests its
//! hosts hold, and a host whose manifest it holds sends the hash, not the manifest.

use crate::common::Hosts;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

const KNOWN: &str = "(its live manifest known here by its SHA-256, not sent)";

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Where the deployer keeps the copies of the test application's manifests.
fn shelf(h: &Hosts) -> std::path::PathBuf {
    let key = sha256(b"usersvc");
    h.dir
        .path()
        .join("cache/deployer/manifests")
        .join(&key[..16])
}

/// The copies on the deploy machine, by name.
fn copies(h: &Hosts) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(shelf(h))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let bytes = std::fs::read(e.path()).expect("copy");
                    (e.file_name().to_string_lossy().into_owned(), bytes)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Host `i`'s manifest of its current release.
fn live_manifest(h: &Hosts, i: usize) -> Vec<u8> {
    let current = h.current(i).expect("current");
    std::fs::read(h.deploy_to(i).join(".deploy/manifests").join(current)).expect("manifest")
}

/// Deploys version `v` of the tree and checks what every host has: `v`, and the unchanged
/// files linked from the release before; how many hosts named their manifest by its hash.
fn deploy(h: &Hosts, v: &str) -> usize {
    let before: Vec<String> = (0..2).map(|i| h.current(i).expect("current")).collect();
    h.write("v", v);
    let r = h.deploy_ok();
    for (i, before) in before.iter().enumerate() {
        let now = h.deploy_to(i).join("current");
        assert_eq!(std::fs::read_to_string(now.join("v")).expect("v"), v);
        let ino = |d: &std::path::Path| std::fs::metadata(d.join("lib/f7")).expect("f7").ino();
        let old = h.deploy_to(i).join("releases").join(before);
        assert_eq!(ino(&now), ino(&old), "linked on host {i}: {r}");
    }
    r.stderr.matches(KNOWN).count()
}

#[test]
fn a_live_manifest_the_deployer_holds_is_named_by_its_hash_not_sent() {
    let h = Hosts::start(&[92, 93]);
    for i in 0..30 {
        h.write(&format!("lib/f{i}"), &i.to_string());
    }
    h.write("v", "1");
    h.deploy_ok();
    // The first release travelled whole: the deployer keeps what it sent.
    let dir = shelf(&h);
    let held = |i| {
        let live = live_manifest(&h, i);
        copies(&h).get(&sha256(&live)) == Some(&live)
    };
    assert!(held(0) && held(1), "{:?}", copies(&h).keys());
    // Without copies (another machine deployed), the hosts send their listing. The deployer
    // keeps one copy of it (both hold the same) and, after staging, one of the manifest both
    // hosts made for the new release, byte for byte.
    std::fs::remove_dir_all(&dir).expect("forget");
    assert_eq!(deploy(&h, "2"), 0);
    assert_eq!(copies(&h).len(), 2, "{:?}", copies(&h).keys());
    assert!(held(0) && held(1), "{:?}", copies(&h).keys());
    let mode = |p: &std::path::Path| std::fs::metadata(p).expect("mode").permissions().mode();
    assert_eq!(mode(&dir) & 0o777, 0o700);
    for name in copies(&h).keys() {
        assert_eq!(mode(&dir.join(name)) & 0o777, 0o600, "{name}");
    }
    // Now each host names its manifest, and the files are linked as before.
    assert_eq!(deploy(&h, "3"), 2);
    // Rolled back to release 2, whose manifest the deployer saw made: named too.
    let r = h.run(&["rollback"]);
    assert_eq!(r.code, 0, "{r}");
    assert_eq!(deploy(&h, "4"), 2);
    // A copy that no longer hashes to its name is not believed: the host is asked again and
    // sends its listing; nothing is sent that could be linked.
    let damage = || {
        for name in copies(&h).keys() {
            std::fs::write(dir.join(name), "damaged\n").expect("damage");
        }
    };
    // Read for a plan (no lock), then locked for a deploy.
    damage();
    h.write("v", "5");
    let r = h.run(&["deploy", "--dry-run"]);
    assert_eq!(
        (r.code, r.stdout.matches(" 30 files ").count()),
        (0, 2),
        "{r}"
    );
    damage();
    assert_eq!(deploy(&h, "5"), 0);
    assert_eq!(deploy(&h, "6"), 2, "the copies were made anew");
}
