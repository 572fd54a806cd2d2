//! The layout on each host and the shell steps that read and change it:
//! `releases/<UTC %Y%m%d%H%M%S>/` (complete once it holds `REVISION`), `current` → the absolute
//! `<deploy_to>/releases/<ts>` (as Capistrano 3 writes it: its cleanup compares it with absolute
//! paths), `shared/`, `revisions.log` (Capistrano's text lines), and `.deploy/` (`lock/`, `log`
//! (the deployer's own JSON lines), `manifests/<ts>`, `bad/<ts>` holding why a release was
//! rolled back). Every interpolated value goes through [`quote`].

use crate::delta::{Known, KnownReader};
use crate::live_manifests::{Copy, LiveManifests, sum_ok};
use crate::manifest::Manifest;
use crate::remote_text::{MAX_REVISION, RELEASE_FORMAT, printable, release_name_ok, revision_ok};
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
    /// `current` points at a release directory that is not there.
    pub dangling: bool,
    /// Every release, oldest first.
    pub releases: Vec<ReleaseInfo>,
    /// The lock holder's line, when the lock is held.
    pub lock: Option<String>,
    /// Required shared files missing in `shared/`.
    pub missing_shared: Vec<String>,
    /// Which files of the new release the current one already holds, when asked for and the
    /// current release could be listed.
    pub known: Option<Known>,
    /// The SHA-256 of the current release's manifest, as the host hashed it, when it was
    /// listed.
    pub manifest_sum: Option<String>,
    /// The listing was not sent: the deployer held a copy of that manifest.
    pub listed_from_copy: bool,
    /// The host named a copy the deployer held, but it could not be read: `known` is missing,
    /// and the listing must be asked for again, sent (see [`LiveListing::sent`]).
    pub copy_lost: bool,
}

/// What a host's listing of its current release is read against: the new release's manifest,
/// and the copies of manifests the deployer holds (offered by their sums unless `offer` is
/// off).
#[derive(Clone, Copy)]
pub struct LiveListing<'m> {
    pub new: &'m Manifest,
    pub copies: &'m LiveManifests,
    pub offer: bool,
}

impl<'m> LiveListing<'m> {
    pub fn new(new: &'m Manifest, copies: &'m LiveManifests) -> Self {
        Self {
            new,
            copies,
            offer: true,
        }
    }

    /// The same, but every host sends its listing (a copy it named could not be read).
    pub fn sent(self) -> Self {
        Self {
            offer: false,
            ..self
        }
    }

    /// The sums the host is told the deployer holds.
    pub fn sums(&self) -> &'m [String] {
        if self.offer {
            self.copies.offered()
        } else {
            &[]
        }
    }
}

/// Reads the layout. `required`: shared files that must be in `shared/` (those missing are
/// named). With `listing`, a listing of the current release follows: `manifest-known:SUM` when
/// the SHA-256 of its manifest is one of `listing`'s (a copy the deployer holds, see
/// `live_manifests`), else `manifest-sha256:SUM` and the manifest after a `manifest:` line; or,
/// for a release the deployer did not make (Capistrano's), the files' modes after `modes:` and
/// their SHA-256 sums after `sums:`, computed on the host.
pub fn state_script(deploy_to: &str, listing: Option<&[String]>, required: &[String]) -> String {
    let mut s = format!(
        r#"cd {d} 2>/dev/null || {{ echo missing; exit 0; }}
c=$(readlink current 2>/dev/null) && c=${{c%/}} && c=${{c##*/}} && echo "current=$c" && {{ [ -d current ] || echo dangling; }}
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
    for f in required {
        s.push_str(&format!(
            "[ -e shared/{f} ] || [ -L shared/{f} ] || printf 'missing_shared=%s\\n' {f}\n",
            f = quote(f)
        ));
    }
    if let Some(sums) = listing {
        // Only hex digits and spaces: safe unquoted.
        let sums: Vec<&str> = sums
            .iter()
            .map(String::as_str)
            .filter(|s| sum_ok(s))
            .collect();
        s.push_str(&format!(
            r#"if [ -n "$c" ] && [ -d "releases/$c" ]; then
  if [ -f ".deploy/manifests/$c" ]; then
    s=$(sha256sum 2>/dev/null < ".deploy/manifests/$c"); s=${{s%% *}}; k=
    if [ ${{#s}} -eq 64 ]; then case " {sums} " in *" $s "*) k=1;; esac; fi
    if [ -n "$k" ]; then echo "manifest-known:$s"
    else [ ${{#s}} -eq 64 ] && echo "manifest-sha256:$s"; echo manifest:; cat ".deploy/manifests/$c"; echo; fi
  else echo modes:; (cd "releases/$c" && find . -type f -printf '%m\t%P\n'); echo sums:; (cd "releases/$c" && find . -type f -exec sha256sum -- {{}} +); fi
fi
"#,
            sums = sums.join(" ")
        ));
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

/// Reads [`state_script`]'s output line by line as it arrives (see `ssh::Shell::run_lines`).
/// Names and revisions are checked; reasons and the lock's owner are kept escaped
/// ([`printable`]); the listing of the current release is matched against `new` as it comes,
/// never kept. Lines it does not know are kept (the last few) for messages.
pub struct StateReader<'m> {
    state: HostState,
    section: Section,
    listing: Option<LiveListing<'m>>,
    known: Option<KnownReader<'m>>,
    /// The listing being streamed, kept as a copy.
    copy: Option<Copy>,
    bad: Vec<(String, String)>,
    problem: Option<Untrusted>,
    other: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Section {
    Layout,
    Manifest,
    Modes,
    Sums,
}

impl<'m> StateReader<'m> {
    /// `listing`: what the current release's listing is read against, when it is asked for.
    pub fn new(listing: Option<LiveListing<'m>>) -> Self {
        Self {
            state: HostState {
                exists: true,
                ..HostState::default()
            },
            section: Section::Layout,
            listing,
            known: None,
            copy: None,
            bad: Vec::new(),
            problem: None,
            other: Vec::new(),
        }
    }

    pub fn line(&mut self, line: &[u8]) {
        let section = match line {
            // Only after the layout: within the listing it is a line of it (not one of ours),
            // which the host's awk counts too; taken as a header, every later line's number
            // would be one short of the host's.
            b"manifest:" if self.section == Section::Layout => Some(Section::Manifest),
            b"modes:" if self.section == Section::Layout => Some(Section::Modes),
            b"sums:" if self.section == Section::Modes => Some(Section::Sums),
            _ => None,
        };
        if let Some(section) = section {
            self.section = section;
            if self.known.is_none() {
                self.known = self.listing.map(|l| KnownReader::new(l.new));
            }
            return;
        }
        match (self.section, self.known.as_mut()) {
            (Section::Layout, _) => self.layout_line(&String::from_utf8_lossy(line)),
            (Section::Manifest, Some(k)) => {
                k.manifest_line(line);
                if let Some(c) = self.copy.as_mut() {
                    c.line(line);
                }
            }
            (Section::Modes, Some(k)) => k.mode_line(line),
            (Section::Sums, Some(k)) => k.sum_line(line),
            (_, None) => {}
        }
    }

    fn layout_line(&mut self, line: &str) {
        let st = &mut self.state;
        if line == "missing" {
            st.exists = false;
        } else if line == "dangling" {
            st.dangling = true;
        } else if let Some(c) = line.strip_prefix("current=") {
            if !c.is_empty() && !release_name_ok(c) {
                self.problem.get_or_insert(Untrusted(format!(
                    "current points to {:?}, not a release",
                    printable(c)
                )));
            }
            st.current = Some(c.to_owned()).filter(|c| !c.is_empty());
        } else if let Some(r) = line.strip_prefix("release=") {
            match parse_release(r) {
                Ok(r) => st.releases.push(r),
                Err(e) => {
                    self.problem.get_or_insert(e);
                }
            }
        } else if let Some(b) = line.strip_prefix("bad=") {
            let (name, why) = b.split_once('\t').unwrap_or((b, ""));
            self.bad
                .push((name.to_owned(), printable(why).into_owned()));
        } else if let Some(l) = line.strip_prefix("lock=") {
            st.lock = Some(printable(l).into_owned());
        } else if let Some(sum) = line.strip_prefix("manifest-sha256:") {
            self.manifest_sum(sum, false);
        } else if let Some(sum) = line.strip_prefix("manifest-known:") {
            self.manifest_sum(sum, true);
        } else if let Some(f) = line.strip_prefix("missing_shared=") {
            st.missing_shared.push(printable(f).into_owned());
        } else if !line.is_empty() {
            if self.other.len() == 8 {
                self.other.remove(0);
            }
            self.other.push(line.chars().take(2000).collect());
        }
    }

    /// The host's SHA-256 of its live manifest; `known`: it named one of the copies offered
    /// and sends nothing more, else the manifest follows (kept as a copy).
    fn manifest_sum(&mut self, sum: &str, known: bool) {
        let Some(listing) = self.listing.filter(|_| sum_ok(sum)) else {
            return;
        };
        if known && !listing.sums().iter().any(|s| s == sum) {
            self.problem.get_or_insert(Untrusted(format!(
                "it says the deployer holds its manifest {:?}, which it was not offered",
                printable(sum)
            )));
            return;
        }
        self.state.manifest_sum = Some(sum.to_owned());
        self.state.listed_from_copy = known;
        if !known {
            self.copy = listing.copies.copy(sum);
        }
    }

    /// The lines it did not know, the last few: what a failing script said.
    pub fn other(&self) -> &[String] {
        &self.other
    }

    pub fn finish(self) -> Result<HostState, Untrusted> {
        if let Some(p) = self.problem {
            return Err(p);
        }
        let mut st = self.state;
        for (name, why) in self.bad {
            if let Some(r) = st.releases.iter_mut().find(|r| r.name == name) {
                r.bad = Some(if why.is_empty() { "bad".into() } else { why });
            }
        }
        st.releases.sort_by(|a, b| a.name.cmp(&b.name));
        st.known = self.known.map(KnownReader::finish);
        match (&st.manifest_sum, self.listing) {
            (Some(sum), Some(l)) if st.listed_from_copy => {
                st.known = l.copies.known(sum, l.new);
                st.copy_lost = st.known.is_none();
            }
            // Kept only once the listing was read whole (the step did not fail).
            _ => self.copy.into_iter().for_each(Copy::keep),
        }
        Ok(st)
    }
}

/// Reads [`state_script`]'s whole output at once (no listing asked for).
#[cfg(test)]
pub fn parse_state(out: &str) -> Result<HostState, Untrusted> {
    let mut r = StateReader::new(None);
    for line in out.lines() {
        r.line(line.as_bytes());
    }
    r.finish()
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

/// Points `current` at `release` atomically (a temp link renamed over it) once the shell test
/// `test` holds. The link is absolute, `<deploy_to>/releases/<release>`, as Capistrano 3 writes
/// it (deploy.toml's `deploy_to` is always absolute).
fn relink(deploy_to: &str, release: &str, test: &str) -> String {
    let target = format!("{}/releases/{release}", deploy_to.trim_end_matches('/'));
    format!(
        "cd {d} && [ {test} ] && ln -s {t} .current.tmp.$$ && mv -T .current.tmp.$$ current || {{ rm -f .current.tmp.$$; exit 1; }}",
        d = quote(deploy_to),
        t = quote(&target),
    )
}

/// Points `current` at the complete `release` (it holds `REVISION`).
pub fn switch_script(deploy_to: &str, release: &str) -> String {
    let test = format!("-f releases/{}/REVISION", quote(release));
    relink(deploy_to, release, &test)
}

/// Puts `current` back where it was before this run: at `release` (which must still be
/// there, complete or not: it was live), or nowhere when there was none.
pub fn restore_script(deploy_to: &str, release: Option<&str>) -> String {
    match release {
        Some(r) => relink(deploy_to, r, &format!("-d releases/{}", quote(r))),
        None => format!("cd {} && rm -f current", quote(deploy_to)),
    }
}

/// Removes releases with their manifests and marks. Names that are not plain directory names
/// are skipped (an empty one would mean all of `releases/`). The releases leave `releases/` at
/// once (moved into `.deploy/trash/`), and are deleted there in the background, so a deploy
/// does not wait for tens of thousands of unlinks; trash an interrupted deletion left is swept
/// after an hour. The deletion runs at the lowest CPU priority (`nice -n 19`, where nice can
/// lower it) and the lowest best-effort I/O priority (where there is `ionice`), so it yields
/// to the service the host runs, and to the next deploy.
pub fn remove_script(deploy_to: &str, releases: &[String]) -> String {
    let names: Vec<String> = releases
        .iter()
        .filter(|r| !(r.is_empty() || *r == "." || *r == ".." || r.contains('/')))
        .map(|r| quote(r))
        .collect();
    let mut s = format!(
        "cd {} || exit 1
",
        quote(deploy_to)
    );
    if names.is_empty() {
        return s;
    }
    s.push_str(
        "mkdir -p .deploy/trash && t=$(mktemp -d .deploy/trash/XXXXXXXX) || exit 1
",
    );
    for r in names {
        s.push_str(&format!(
            "if [ -e releases/{r} ]; then mv releases/{r} \"$t\"/ || exit 1; fi; rm -rf .deploy/manifests/{r} .deploy/bad/{r} || exit 1\n"
        ));
    }
    s.push_str(
        "lowest=; nice -n 19 true >/dev/null 2>&1 && lowest='nice -n 19'
nohup $lowest sh -c '{ command -v ionice && ionice -c 2 -n 7 -p $$; } >/dev/null 2>&1; rm -rf \"$1\"; find .deploy/trash -mindepth 1 -maxdepth 1 -mmin +60 -exec rm -rf {} +' sh \"$t\" >/dev/null 2>&1 </dev/null &\n",
    );
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

/// In the staged release: replaces each shared path with a link into `shared/`, then writes
/// `REVISION`, which marks the release complete. A shared dir missing in `shared/` is made
/// (seeded from the release's copy when it has one); a shared file must be there already,
/// unless it is `seed`ed: then the first time it is copied from the release.
pub fn link_shared_script(
    deploy_to: &str,
    release: &str,
    dirs: &[String],
    files: &[(String, bool)],
    revision: &str,
) -> String {
    let mut s = format!(
        "cd {} || exit 1
s={}
",
        quote(&format!("{deploy_to}/releases/{release}")),
        quote(&format!("{deploy_to}/shared")),
    );
    let absent = |x: &str| format!(r#"[ ! -e "$s"/{x} ] && [ ! -L "$s"/{x} ]"#);
    for x in dirs {
        let x = quote(x);
        s.push_str(&format!(
            r#"if {a}; then mkdir -p "$(dirname "$s"/{x})" && if [ -d {x} ] && [ ! -L {x} ]; then cp -a {x} "$s"/{x}; else mkdir -p "$s"/{x}; fi || exit 1; fi
"#,
            a = absent(&x)
        ));
    }
    for (x, seed) in files {
        let x = quote(x);
        let fill = if *seed {
            format!(
                r#"if [ -f {x} ] && [ ! -L {x} ]; then mkdir -p "$(dirname "$s"/{x})" && cp -p {x} "$s"/{x} || exit 1; else echo "shared file "{x}" is not in shared/, and the release has none to seed it from"; exit 1; fi"#
            )
        } else {
            format!(r#"echo "shared file "{x}" is missing in $s: create it there first"; exit 1"#)
        };
        s.push_str(&format!("if {a}; then {fill}; fi\n", a = absent(&x)));
    }
    for x in dirs.iter().chain(files.iter().map(|(f, _)| f)) {
        s.push_str(&format!(
            "rm -rf {x} && mkdir -p \"$(dirname {x})\" && ln -s \"$s\"/{x} {x} || exit 1\n",
            x = quote(x)
        ));
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
    s.push_str(&timed_commands(hooks, timeout));
    s
}

/// Runs `command` in `deploy_to`'s current release, with the hooks' environment for it (see
/// `deployer run`), under GNU `timeout` when the host has it, as a hook.
pub fn task_script(deploy_to: &str, command: &str, timeout: std::time::Duration) -> String {
    let d = quote(deploy_to);
    let mut s = format!(
        "cd {d}/current 2>/dev/null || {{ echo \"no current release in \"{d}\": deploy first\"; exit 1; }}
p=$(pwd -P)
export DEPLOY_TO={d} RELEASE=\"${{p##*/}}\" RELEASE_PATH=\"$p\" PREVIOUS_RELEASE= REVISION=\"$(cat REVISION 2>/dev/null)\"
"
    );
    s.push_str(&timed_commands(&[command.to_owned()], timeout));
    s
}

/// Shell lines running `commands` one after the other, each under GNU `timeout` when the host
/// has it (killed 2 s after its signal; its whole process group: sshd signals nothing), the
/// first failure ending the script with its status and a line saying which and why.
fn timed_commands(commands: &[String], timeout: std::time::Duration) -> String {
    let secs = timeout.as_secs().max(1);
    let mut s = format!(
        "if command -v timeout >/dev/null 2>&1; then t=\"timeout -k 2 {secs}\"; else t=; fi\n"
    );
    for h in commands {
        s.push_str(&format!(
            "$t sh -c {q}; s=$?; if [ $s -ne 0 ]; then if [ -n \"$t\" ] && {{ [ $s -eq 124 ] || [ $s -eq 137 ]; }}; then printf 'hook %s timed out after {secs}s (killed)\\n' {q}; else printf 'hook %s exited %s\\n' {q} $s; fi; exit $s; fi\n",
            q = quote(h)
        ));
    }
    s
}

/// One record of what happened to a host: a JSON line in `.deploy/log`, and, when `current`
/// moved, Capistrano's line in `revisions.log`.
#[derive(Debug, Clone, Serialize)]
pub struct LogEntry<'a> {
    pub release: &'a str,
    pub revision: &'a str,
    /// What was deployed, as Capistrano names it: the `--ref` given, or the source's git
    /// branch (`none` outside git).
    pub branch: &'a str,
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
    /// For `rolled_back`: the release `current` went back to (none: it was removed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<&'a str>,
}

impl LogEntry<'_> {
    /// The line Capistrano 3 writes to `revisions.log` for the same event, if it writes one.
    pub fn capistrano_line(&self) -> Option<String> {
        match self.outcome {
            "deployed" => Some(format!(
                "Branch {} (at {}) deployed as release {} by {}",
                self.branch, self.revision, self.release, self.user
            )),
            "rollback" => Some(format!(
                "{} rolled back to release {}",
                self.user, self.release
            )),
            "rolled_back" => self
                .to
                .map(|to| format!("{} rolled back to release {to}", self.user)),
            _ => None,
        }
    }
}

/// Appends `entry` to `.deploy/log`, and its Capistrano line (one line: newlines in values are
/// spaces) to `revisions.log`.
pub fn log_script(deploy_to: &str, entry: &LogEntry) -> String {
    let json = serde_json::to_string(entry).unwrap_or_default();
    let d = quote(deploy_to);
    let mut s = format!(
        "mkdir -p {d}/.deploy && printf '%s\\n' {l} >> {d}/.deploy/log",
        l = quote(&json),
    );
    if let Some(line) = entry.capistrano_line() {
        let line = line.replace(['\n', '\r'], " ");
        s.push_str(&format!(
            "\nprintf '%s\\n' {l} >> {d}/revisions.log",
            l = quote(&line)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removed releases leave `releases/` at once and are deleted in the background at the
    /// lowest priority: the `rm` that deletes them runs at niceness 19 (a stand-in `rm` first
    /// on PATH reads its own from /proc, then runs the real one).
    #[test]
    fn removed_releases_are_deleted_in_the_background_at_the_lowest_priority() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().expect("dir");
        let app = d.path().join("app");
        std::fs::create_dir_all(app.join("releases/20261123100001/lib")).expect("mkdir");
        std::fs::write(app.join("releases/20261123100001/lib/a"), "a").expect("a");
        let bin = d.path().join("bin");
        std::fs::create_dir_all(&bin).expect("bin");
        let seen = d.path().join("niceness");
        let real = ["/usr/bin/rm", "/bin/rm"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("rm");
        // The foreground `rm` (manifests, marks) writes 0 first; the background one, 19, before
        // it deletes the trash, which the loop below waits for.
        let rm = format!(
            "#!/bin/sh\ncut -d' ' -f19 /proc/$$/stat > '{}'\nexec {real} \"$@\"\n",
            seen.display()
        );
        std::fs::write(bin.join("rm"), rm).expect("rm");
        std::fs::set_permissions(bin.join("rm"), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let path = format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let script = remove_script(&app.display().to_string(), &["20261123100001".into()]);
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .env("PATH", path)
            .output()
            .expect("sh");
        assert!(out.status.success(), "{out:?}");
        assert!(
            !app.join("releases/20261123100001").exists(),
            "gone at once"
        );
        let trash = app.join(".deploy/trash");
        let empty = || std::fs::read_dir(&trash).is_ok_and(|mut d| d.next().is_none());
        for _ in 0..200 {
            if empty() && seen.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        assert!(empty(), "deleted in the background");
        let niceness = std::fs::read_to_string(&seen).unwrap_or_default();
        assert_eq!(niceness.trim(), "19");
    }

    fn rel(name: &str, complete: bool, bad: bool) -> ReleaseInfo {
        ReleaseInfo {
            name: name.into(),
            complete,
            revision: String::new(),
            bad: bad.then(|| "health".into()),
        }
    }

    /// A line `manifest:` inside the live manifest is a line of it, not a second header: the
    /// files are still linked, and the new manifest travels whole (the host's line numbers and
    /// ours could otherwise differ, and the host would keep, and link, the wrong lines).
    #[test]
    fn a_manifest_line_inside_the_listing_is_a_line_of_it() {
        let dir = tempfile::tempdir().expect("dir");
        for f in ["a", "b"] {
            std::fs::write(dir.path().join(f), f).expect("write");
        }
        let none = crate::manifest::Exclude::new(dir.path(), &[]).expect("none");
        let m = Manifest::scan(dir.path(), &none).expect("scan");
        let text = String::from_utf8(m.to_lines()).expect("utf-8");
        let copies = LiveManifests::at(None);
        let read = |inner: bool| {
            let mut r = StateReader::new(Some(LiveListing::new(&m, &copies)));
            r.line(b"current=20261123100002");
            r.line(b"manifest:");
            for (i, line) in text.lines().enumerate() {
                if inner && i == 1 {
                    r.line(b"manifest:");
                }
                r.line(line.as_bytes());
            }
            r.line(b"");
            let known = r.finish().expect("trusted").known;
            let d = crate::delta::Delta::new(&m, known.as_ref(), &[]);
            (d.link, d.rebuild.is_some())
        };
        assert_eq!(read(false), (2, true));
        assert_eq!(read(true), (2, false));
    }

    #[test]
    fn parses_the_state() {
        let st = parse_state(
            "current=20261123100002\nrelease=20261123100001\t1\tabc\nrelease=20261123100002\t1\tdef 1\nrelease=20261123100003\t0\t\nbad=20261123100001\thealth gate failed\nlock=bob@x pid 4 since t\nmissing_shared=a.toml\n",
        )
        .expect("trusted");
        assert!(st.exists);
        assert_eq!(st.current.as_deref(), Some("20261123100002"));
        assert_eq!(st.releases.len(), 3);
        assert_eq!(st.releases[1].revision, "def 1");
        assert!(!st.releases[2].complete);
        assert_eq!(st.releases[0].bad.as_deref(), Some("health gate failed"));
        assert_eq!(st.lock.as_deref(), Some("bob@x pid 4 since t"));
        assert_eq!(st.missing_shared, ["a.toml"]);
        assert!(!st.dangling && st.known.is_none());
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
    fn current_is_relinked_absolute_and_only_to_what_is_there() {
        let switch = switch_script("/srv/my app/", "20261123100000");
        assert!(
            switch.contains("[ -f releases/'20261123100000'/REVISION ]")
                && switch.contains("ln -s '/srv/my app/releases/20261123100000' .current.tmp.$$"),
            "{switch}"
        );
        let restore = restore_script("/srv/app", Some("20261123100000"));
        assert!(
            restore.contains("[ -d releases/'20261123100000' ]"),
            "{restore}"
        );
        assert_eq!(
            restore_script("/srv/app", None),
            "cd '/srv/app' && rm -f current"
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
