//! The layout on each host and the shell steps that read and change it:
//! `releases/<UTC %Y%m%d%H%M%S>/` (complete once it holds `REVISION`), `current` → `releases/<ts>`
//! (relative, so it survives `deploy_to` being moved or mounted elsewhere), `shared/`, `revisions.log` (JSON lines), and `.deploy/` (`lock/`,
//! `manifests/<ts>`, `bad/<ts>` holding why a release was rolled back). Every interpolated
//! value goes through [`quote`].

use crate::remote_text::{MAX_REVISION, printable, release_name_ok, revision_ok};
use crate::ssh::quote;
use serde::Serialize;

/// One release directory on a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseInfo {
    /// Its name: the UTC time it was made, `%Y%m%d%H%M%S`.
    pub name: String,
    /// Has `REVISION`: every stage up to publishing finished.
    pub complete: bool,
    /// The first line of its `REVISION` file (empty while incomplete).
    pub revision: String,
    /// Why it was rolled back, when it was.
    pub bad: Option<String>,
}

/// What a host has, as read by [`state_script`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostState {
    /// `deploy_to` exists.
    pub exists: bool,
    /// The release `current` points at.
    pub current: Option<String>,
    /// Every release, oldest first.
    pub releases: Vec<ReleaseInfo>,
    /// The lock holder's line, when the lock is held.
    pub lock: Option<String>,
    /// The manifest of the current release (JSON), when asked for and present.
    pub manifest: Option<String>,
}

/// Reads the layout; with `manifest`, the current release's manifest follows a `manifest:` line.
pub fn state_script(deploy_to: &str, manifest: bool) -> String {
    let mut s = format!(
        r#"cd {d} 2>/dev/null || {{ echo missing; exit 0; }}
c=$(readlink current 2>/dev/null) && c=${{c%/}} && echo "current=${{c##*/}}"
for r in releases/*; do
  [ -d "$r" ] || continue
  if [ -f "$r/REVISION" ]; then printf 'release=%s\t1\t%s\n' "${{r#releases/}}" "$(head -n 1 "$r/REVISION" | head -c 200)"
  else printf 'release=%s\t0\t\n' "${{r#releases/}}"; fi
done
for b in .deploy/bad/*; do [ -f "$b" ] && printf 'bad=%s\t%s\n' "${{b##*/}}" "$(head -n 1 "$b" | head -c 300)"; done
[ -d .deploy/lock ] && printf 'lock=%s\n' "$(head -n 1 .deploy/lock/owner 2>/dev/null)"
"#,
        d = quote(deploy_to)
    );
    if manifest {
        s.push_str(
            "[ -n \"$c\" ] && [ -f \".deploy/manifests/${c##*/}\" ] && { echo manifest:; cat \".deploy/manifests/${c##*/}\"; }\n",
        );
    }
    s.push_str("exit 0\n");
    s
}

/// The lock's holder line in [`state_script`]'s output (escaped), whatever else the layout holds:
/// `unlock` must work on a host whose layout is not trusted.
pub fn lock_holder(out: &str) -> Option<String> {
    out.lines()
        .find_map(|l| l.strip_prefix("lock="))
        .map(|l| printable(l).into_owned())
}

/// A host said something that is not what the layout holds (a release name that is not a time
/// stamp, a revision with control characters): the host is refused, not believed.
#[derive(Debug, thiserror::Error)]
#[error("the host's layout is not trusted: {0}")]
pub struct Untrusted(String);

/// Reads [`state_script`]'s output. Names and revisions are checked; reasons and the lock's
/// owner are kept escaped ([`printable`]).
pub fn parse_state(out: &str) -> Result<HostState, Untrusted> {
    let mut st = HostState {
        exists: true,
        ..HostState::default()
    };
    let (head, manifest) = match out.split_once("\nmanifest:\n") {
        Some((h, m)) => (h, Some(m.to_owned())),
        None => match out.strip_prefix("manifest:\n") {
            Some(m) => ("", Some(m.to_owned())),
            None => (out, None),
        },
    };
    st.manifest = manifest;
    let mut bad = Vec::new();
    for line in head.lines() {
        if line == "missing" {
            st.exists = false;
        } else if let Some(c) = line.strip_prefix("current=") {
            if !c.is_empty() && !release_name_ok(c) {
                return Err(Untrusted(format!(
                    "current points to {:?}, not a release",
                    printable(c)
                )));
            }
            st.current = Some(c.to_owned()).filter(|c| !c.is_empty());
        } else if let Some(r) = line.strip_prefix("release=") {
            st.releases.push(parse_release(r)?);
        } else if let Some(b) = line.strip_prefix("bad=") {
            let (name, why) = b.split_once('\t').unwrap_or((b, ""));
            bad.push((name.to_owned(), printable(why).into_owned()));
        } else if let Some(l) = line.strip_prefix("lock=") {
            st.lock = Some(printable(l).into_owned());
        }
    }
    for (name, why) in bad {
        if let Some(r) = st.releases.iter_mut().find(|r| r.name == name) {
            r.bad = Some(if why.is_empty() { "bad".into() } else { why });
        }
    }
    st.releases.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(st)
}

/// One `release=NAME\tCOMPLETE\tREVISION` line, its name and revision checked.
fn parse_release(line: &str) -> Result<ReleaseInfo, Untrusted> {
    let mut f = line.splitn(3, '\t');
    let name = f.next().unwrap_or_default().to_owned();
    let complete = f.next() == Some("1");
    let revision = f.next().unwrap_or_default().to_owned();
    if !release_name_ok(&name) {
        return Err(Untrusted(format!(
            "releases/{:?} is not a release name (YYYYmmddHHMMSS)",
            printable(&name)
        )));
    }
    if !revision_ok(&revision) {
        return Err(Untrusted(format!(
            "release {name}'s REVISION {:?} is not a revision (printable, at most {MAX_REVISION} bytes)",
            printable(&revision)
        )));
    }
    Ok(ReleaseInfo {
        name,
        complete,
        revision,
        bad: None,
    })
}

pub const RELEASE_FORMAT: &str = "%Y%m%d%H%M%S";

/// The new release's name: now in UTC, or one second after the newest existing release when
/// that is not older (two deploys in the same second must not collide).
pub fn next_release<'a>(
    now: chrono::DateTime<chrono::Utc>,
    existing: impl Iterator<Item = &'a str>,
) -> String {
    // Names have whole seconds: compare at that grain (now = 10:00:00.7 collides with 10:00:00).
    let mut t = now - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    for name in existing {
        if let Some(e) = release_time(name)
            && e >= t
        {
            t = e + chrono::Duration::seconds(1);
        }
    }
    t.format(RELEASE_FORMAT).to_string()
}

/// The time a release name stands for (`None`: not a release name).
pub fn release_time(name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::NaiveDateTime::parse_from_str(name, RELEASE_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// Releases `cleanup` removes: bad and incomplete ones, and good ones beyond the newest `keep`;
/// never `current`.
pub fn cleanup_plan(releases: &[ReleaseInfo], current: Option<&str>, keep: usize) -> Vec<String> {
    let mut good: Vec<&ReleaseInfo> = releases
        .iter()
        .filter(|r| r.complete && r.bad.is_none())
        .collect();
    good.sort_by(|a, b| b.name.cmp(&a.name));
    let kept: Vec<&str> = good.iter().take(keep).map(|r| r.name.as_str()).collect();
    let mut out: Vec<String> = releases
        .iter()
        .filter(|r| Some(r.name.as_str()) != current && !kept.contains(&r.name.as_str()))
        .map(|r| r.name.clone())
        .collect();
    out.sort();
    out
}

/// What the cleanup after publishing `new` removes from `releases` (the host's releases before).
pub fn cleanup_after_publish(releases: &[ReleaseInfo], new: &str, keep: usize) -> Vec<String> {
    let mut all = releases.to_vec();
    all.push(ReleaseInfo {
        name: new.to_owned(),
        complete: true,
        revision: String::new(),
        bad: None,
    });
    cleanup_plan(&all, Some(new), keep)
}

/// Where `rollback` goes without `--to`: the newest good release older than `current`.
pub fn previous_good(st: &HostState) -> Option<&ReleaseInfo> {
    let cur = st.current.as_deref()?;
    st.releases
        .iter()
        .rev()
        .find(|r| r.name.as_str() < cur && r.complete && r.bad.is_none())
}

/// Points `current` at `release` atomically (a temp link renamed over it), or removes it.
pub fn switch_script(deploy_to: &str, release: Option<&str>) -> String {
    let d = quote(deploy_to);
    match release {
        Some(r) => format!(
            "cd {d} && [ -f releases/{r}/REVISION ] && ln -s releases/{r} .current.tmp.$$ && mv -T .current.tmp.$$ current || {{ rm -f .current.tmp.$$; exit 1; }}",
            r = quote(r),
        ),
        None => format!("cd {d} && rm -f current"),
    }
}

/// Removes releases with their manifests and marks. Names that are not plain directory names
/// are skipped (an empty one would mean all of `releases/`).
pub fn remove_script(deploy_to: &str, releases: &[String]) -> String {
    let mut s = format!("cd {} || exit 1\n", quote(deploy_to));
    for r in releases {
        if r.is_empty() || r == "." || r == ".." || r.contains('/') {
            continue;
        }
        let r = quote(r);
        s.push_str(&format!(
            "rm -rf releases/{r} .deploy/manifests/{r} .deploy/bad/{r} || exit 1\n"
        ));
    }
    s
}

/// Marks `release` bad with `why`.
pub fn mark_bad_script(deploy_to: &str, release: &str, why: &str) -> String {
    format!(
        "mkdir -p {d}/.deploy/bad && printf '%s\\n' {w} > {d}/.deploy/bad/{r}",
        d = quote(deploy_to),
        r = quote(release),
        w = quote(&why.replace('\n', " ")),
    )
}

/// In the staged release: replaces each shared path with a link into `shared/` (seeding
/// `shared/` from the release, or with an empty dir or file, the first time), then writes
/// `REVISION`, which marks the release complete.
pub fn link_shared_script(
    deploy_to: &str,
    release: &str,
    dirs: &[String],
    files: &[String],
    revision: &str,
) -> String {
    let mut s = format!(
        "cd {} || exit 1
s={}
",
        quote(&format!("{deploy_to}/releases/{release}")),
        quote(&format!("{deploy_to}/shared")),
    );
    for (items, is_dir) in [(dirs, true), (files, false)] {
        for x in items {
            let x = quote(x);
            let (test, seed, empty) = if is_dir {
                ("-d", "cp -a", "mkdir -p")
            } else {
                ("-f", "cp -p", ": >")
            };
            s.push_str(&format!(
                r#"if [ ! -e "$s"/{x} ] && [ ! -L "$s"/{x} ]; then mkdir -p "$(dirname "$s"/{x})" && if [ {test} {x} ] && [ ! -L {x} ]; then {seed} {x} "$s"/{x}; else {empty} "$s"/{x}; fi || exit 1; fi
rm -rf {x} && mkdir -p "$(dirname {x})" && ln -s "$s"/{x} {x} || exit 1
"#
            ));
        }
    }
    s.push_str(&format!("printf '%s\\n' {} > REVISION\n", quote(revision)));
    s
}

/// Runs `hooks` one after the other in the release directory; stops at the first that fails.
/// Each hook runs under GNU `timeout` when the host has it: past `timeout` it is signalled with
/// its whole process group (sshd signals nothing: a command without a terminal would run on),
/// killed 2 s later, and reported as timed out.
pub fn hooks_script(
    deploy_to: &str,
    release: &str,
    previous: Option<&str>,
    revision: &str,
    hooks: &[String],
    timeout: std::time::Duration,
) -> String {
    let path = format!("{deploy_to}/releases/{release}");
    let mut s = format!(
        "cd {p} || exit 1
export DEPLOY_TO={d} RELEASE={r} RELEASE_PATH={p} PREVIOUS_RELEASE={prev} REVISION={rev}
",
        p = quote(&path),
        d = quote(deploy_to),
        r = quote(release),
        prev = quote(previous.unwrap_or("")),
        rev = quote(revision),
    );
    let secs = timeout.as_secs().max(1);
    s.push_str(&format!(
        "if command -v timeout >/dev/null 2>&1; then t=\"timeout -k 2 {secs}\"; else t=; fi\n"
    ));
    for h in hooks {
        s.push_str(&format!(
            "$t sh -c {q}; s=$?; if [ $s -ne 0 ]; then if [ -n \"$t\" ] && {{ [ $s -eq 124 ] || [ $s -eq 137 ]; }}; then printf 'hook %s timed out after {secs}s (killed)\\n' {q}; else printf 'hook %s exited %s\\n' {q} $s; fi; exit $s; fi\n",
            q = quote(h)
        ));
    }
    s
}

/// One line of `revisions.log`.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry<'a> {
    pub release: &'a str,
    pub revision: &'a str,
    pub user: &'a str,
    pub time: String,
    /// `deployed`, `failed`, `rolled_back` (by the health gate or a failure after publish),
    /// or `rollback` (the command).
    pub outcome: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// For `rollback`: the release `current` pointed at before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<&'a str>,
}

pub fn log_script(deploy_to: &str, entry: &LogEntry) -> String {
    let line = serde_json::to_string(entry).unwrap_or_default();
    format!(
        "printf '%s\\n' {l} >> {d}/revisions.log",
        l = quote(&line),
        d = quote(deploy_to)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(name: &str, complete: bool, bad: bool) -> ReleaseInfo {
        ReleaseInfo {
            name: name.into(),
            complete,
            revision: String::new(),
            bad: bad.then(|| "health".into()),
        }
    }

    #[test]
    fn parses_the_state() {
        let st = parse_state(
            "current=20261123100002\nrelease=20261123100001\t1\tabc\nrelease=20261123100002\t1\tdef 1\nrelease=20261123100003\t0\t\nbad=20261123100001\thealth gate failed\nlock=bob@x pid 4 since t\nmanifest:\n{\"entries\":{}}\n",
        )
        .expect("trusted");
        assert!(st.exists);
        assert_eq!(st.current.as_deref(), Some("20261123100002"));
        assert_eq!(st.releases.len(), 3);
        assert_eq!(st.releases[1].revision, "def 1");
        assert!(!st.releases[2].complete);
        assert_eq!(st.releases[0].bad.as_deref(), Some("health gate failed"));
        assert_eq!(st.lock.as_deref(), Some("bob@x pid 4 since t"));
        assert_eq!(st.manifest.as_deref(), Some("{\"entries\":{}}\n"));
        assert!(!parse_state("missing\n").expect("trusted").exists);
        assert_eq!(previous_good(&st), None, "the older one is bad");
    }

    #[test]
    fn what_a_host_says_is_checked_or_escaped() {
        let untrusted = |out: &str| parse_state(out).expect_err("refused").to_string();
        let e = untrusted("release=20261123100001\t1\tx$(id)\u{1b}[2J\n");
        assert!(e.contains("REVISION") && e.contains("\\u{1b}"), "{e}");
        assert!(untrusted("release=../../etc\t1\tabc\n").contains("not a release name"));
        assert!(untrusted("current=..\n").contains("not a release"));
        // Shell text is a fine revision: it is data (the gate gets it as one argument).
        let st = parse_state("release=20261123100001\t1\tx$(id>/tmp/p)\n").expect("printable");
        assert_eq!(st.releases[0].revision, "x$(id>/tmp/p)");
        let st = parse_state(
            "release=20261123100001\t1\tabc\nbad=20261123100001\t\u{1b}]0;owned\u{7}\nlock=\u{1b}[31mmallory\n",
        )
        .expect("escaped");
        assert_eq!(st.releases[0].bad.as_deref(), Some("\\u{1b}]0;owned\\u{7}"));
        assert_eq!(st.lock.as_deref(), Some("\\u{1b}[31mmallory"));
        assert_eq!(
            lock_holder("lock=\u{1b}[1mx\n").as_deref(),
            Some("\\u{1b}[1mx")
        );
    }

    #[test]
    fn release_names_never_collide() {
        let now = chrono::NaiveDateTime::parse_from_str("20261123100000", RELEASE_FORMAT)
            .expect("time")
            .and_utc();
        assert_eq!(next_release(now, std::iter::empty()), "20261123100000");
        assert_eq!(
            next_release(now, ["20261123100000", "x"].into_iter()),
            "20261123100001"
        );
        assert_eq!(
            next_release(now, ["20261123095959"].into_iter()),
            "20261123100000"
        );
        let later = now + chrono::Duration::milliseconds(700);
        assert_eq!(
            next_release(later, ["20261123100000"].into_iter()),
            "20261123100001"
        );
    }

    #[test]
    fn cleanup_keeps_the_newest_and_current() {
        let rs = [
            rel("1", true, false),
            rel("2", true, false),
            rel("3", true, true),
            rel("4", false, false),
            rel("5", true, false),
            rel("6", true, false),
        ];
        assert_eq!(cleanup_plan(&rs, Some("6"), 2), ["1", "2", "3", "4"]);
        // After a rollback to 1: current stays even though it is old.
        assert_eq!(cleanup_plan(&rs, Some("1"), 2), ["2", "3", "4"]);
        // A bad current is never removed.
        assert_eq!(cleanup_plan(&rs, Some("3"), 5), ["4"]);
        let st = HostState {
            exists: true,
            current: Some("6".into()),
            releases: rs.to_vec(),
            ..HostState::default()
        };
        assert_eq!(previous_good(&st).map(|r| r.name.as_str()), Some("5"));
    }
}
