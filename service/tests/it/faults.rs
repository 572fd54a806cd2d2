//! Acknowledged writes survive whatever happens around them, judged by a checker rather than by
//! hand-picked cases (Jepsen's and FoundationDB's simulation tests are the models): concurrent
//! clients write to a few shared ids (plain, conditional and bulk writes) while a seeded fault
//! schedule acts on PostgreSQL (crashed with `-m immediate`, frozen with SIGSTOP) and on usersvc
//! (`kill -9` and a restart, `usersvc upgrade`). Every answer is recorded; a trigger records
//! every revision the database applies; `testbed::history::check` then says whether they agree.
//!
//! `USERSVC_FAULT_SEED` and `USERSVC_FAULT_SECS` choose another schedule and its length (`make
//! faults` runs a longer one); a failing run prints its seed and the first rule it broke.

use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use testbed::history::{self, Outcome, Row, Summary, Write};
use testbed::process::{Peer, free_port};
use testbed::writers::{Rng, Workload, Writers};
use testbed::{Postgres, eventually};

/// The binary under test: `$USERSVC_BIN` (a release build, another version), else this build's.
fn binary() -> PathBuf {
    std::env::var_os("USERSVC_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_usersvc")))
}

/// usersvc on a fixed port (a restart or an upgrade keeps it), its journal and pid file in a
/// temp dir. Every server it ever ran is killed on drop, upgraded ones included.
struct Service {
    /// The journal's own small filesystem, when a fault fills it (unmounted before `dir` goes).
    tmpfs: Option<Tmpfs>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    database_url: String,
    extra: Vec<String>,
    /// The servers this test started itself (an upgrade's are children of the old server).
    peers: Vec<Peer>,
}

impl Service {
    fn start(pg: &Postgres, extra: &[&str]) -> Self {
        Self::on_url(pg.url(), extra)
    }

    /// On a database URL of its own (several hosts, for a failover).
    fn on_url(database_url: String, extra: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let mut s = Self {
            tmpfs: None,
            dir: tempfile::tempdir().expect("temp dir"),
            addr,
            database_url,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            peers: Vec::new(),
        };
        s.launch();
        s
    }

    /// As `on_url`, its journal (and the local copy beside it) on a tmpfs of its own, so a
    /// fault can fill the journal's disk.
    fn on_url_with_tmpfs(database_url: String, extra: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = Self {
            tmpfs: Some(Tmpfs::mount(&dir.path().join("journal"))),
            dir,
            addr,
            database_url,
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            peers: Vec::new(),
        };
        s.launch();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn journal(&self) -> PathBuf {
        match &self.tmpfs {
            Some(t) => t.path.join("usersvc.journal"),
            None => self.path("usersvc.journal"),
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--listen".to_owned(),
            self.addr.to_string(),
            "--database-url".into(),
            self.database_url.clone(),
            "--journal".into(),
            self.journal().display().to_string(),
            "--pid-file".into(),
            self.path("usersvc.pid").display().to_string(),
            "--log-format".into(),
            "json".into(),
        ];
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts a server and waits until it answers `/health` (200, or 503 on a cold start). A
    /// server replaced just before the kill may still be finishing its last writes: then the
    /// journal is still its own and the new one is refused; start again, as systemd would.
    fn launch(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut cmd = Command::new(binary());
            cmd.args(self.args()).current_dir(self.dir.path());
            let mut peer = Peer::spawn("usersvc", cmd);
            while !matches!(self.health_status(), Some(200 | 503)) {
                if let Some(status) = peer.wait_timeout(Duration::from_millis(20)) {
                    std::thread::sleep(Duration::from_millis(50)); // its last lines
                    let log = peer.log();
                    assert!(
                        log.contains("is in use by another usersvc") && Instant::now() < deadline,
                        "usersvc exited ({status}) before it served:\n{log}"
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "usersvc did not answer /health within 30 s:\n{}",
                    peer.log()
                );
            }
            self.peers.push(peer);
            if matches!(self.health_status(), Some(200 | 503)) {
                return;
            }
        }
    }

    /// `/health`'s status, or `None` when nothing answers (yet).
    fn health_status(&self) -> Option<u16> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let resp = agent.get(format!("http://{}/health", self.addr)).call();
        resp.ok().map(|r| r.status().as_u16())
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("usersvc.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// `kill -9` of the serving process, whoever started it; returns once it is gone.
    fn kill(&mut self) {
        let pid = self.pid().expect("a serving pid");
        testbed::signal(pid, libc::SIGKILL);
        eventually("the killed server is gone", Duration::from_secs(10), || {
            !service::is_alive(pid)
        });
    }

    /// `usersvc upgrade`, which must succeed.
    fn upgrade(&self) -> Output {
        let out = Command::new(binary())
            .arg("--pid-file")
            .arg(self.path("usersvc.pid"))
            .args(["upgrade", "--timeout", "60s"])
            .output()
            .expect("run usersvc upgrade");
        assert!(
            out.status.success(),
            "upgrade failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        out
    }

    fn health(&self) -> Value {
        testbed::http::get(
            &testbed::http::agent(),
            &format!("http://{}/health", self.addr),
        )
        .json()
    }

    /// Waits until the journal is replayed and the store is healthy again (a quarantine, which
    /// keeps `/health` at 503 for an operator, may remain).
    fn settled(&self) {
        let agent = testbed::http::agent();
        let url = format!("http://{}/health", self.addr);
        eventually("the journal is replayed", Duration::from_secs(90), || {
            let h = testbed::http::get(&agent, &url).json();
            h["journal_depth"] == 0 && h["store"] == "ok" && h["breaker"] == "closed"
        });
    }

    /// The tokens of the writes in the quarantine: acknowledged, then found unusable on replay
    /// (a damaged record, a conflict), kept for an operator: their outcome is theirs to decide.
    fn quarantined_tokens(&self) -> Vec<String> {
        let mut path = self.journal().into_os_string();
        path.push(".quarantine");
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        let mut tokens = Vec::new();
        // A document inside an entry, and one inside a bulk write's escaped text.
        for key in [r#""w":""#, r#"\"w\":\""#] {
            let mut rest = text.as_str();
            while let Some(at) = rest.find(key) {
                rest = &rest[at + key.len()..];
                let end = rest.find(['"', '\\']).unwrap_or(rest.len());
                tokens.push(rest[..end].to_owned());
            }
        }
        tokens
    }

    /// What it serves, paged through with `get_users {limit, after}`.
    fn served(&self) -> Vec<Row> {
        let agent = testbed::http::agent();
        let mut rows = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let req = json!({"jsonrpc": "2.0", "id": 1, "method": "get_users",
                "params": {"limit": 500, "after": after}});
            let answer = testbed::http::post(
                &agent,
                &format!("http://{}/", self.addr),
                &[("content-type", "application/json")],
                req.to_string().as_bytes(),
            )
            .json();
            let page = answer["result"].as_array().cloned().unwrap_or_else(|| {
                panic!("get_users failed: {answer}");
            });
            if page.is_empty() {
                return rows;
            }
            for u in &page {
                rows.push(Row {
                    id: u["id"].as_str().unwrap_or_default().to_owned(),
                    rev: u["rev"].as_i64().unwrap_or_default(),
                    token: u["w"].as_str().unwrap_or_default().to_owned(),
                });
            }
            after = rows.last().map(|r| r.id.clone());
        }
    }

    fn log(&self) -> String {
        let logs: Vec<String> = self.peers.iter().map(Peer::log).collect();
        logs.join("\n--- next server ---\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            testbed::signal(pid, libc::SIGKILL);
        }
    }
}

/// Records every revision the database applies, in commit order (one committer at a time, so
/// the sequence is the commit order), with the token of the write whose document it is.
fn record_applied(pg: &Postgres) {
    pg.psql(
        "CREATE TABLE applied (seq bigserial PRIMARY KEY, id text NOT NULL, rev bigint NOT NULL, token text);
         CREATE FUNCTION record_applied() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           INSERT INTO applied (id, rev, token) VALUES (NEW.id, NEW.rev, NEW.doc::json->>'w');
           RETURN NEW;
         END $$;
         CREATE TRIGGER record_applied AFTER INSERT OR UPDATE ON users
           FOR EACH ROW EXECUTE FUNCTION record_applied();",
    );
}

fn rows(pg: &Postgres, sql: &str) -> Vec<Row> {
    pg.psql(sql)
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut f = l.split('|');
            let (id, rev, token) = (f.next(), f.next(), f.next());
            Row {
                id: id.unwrap_or_default().to_owned(),
                rev: rev.and_then(|r| r.parse().ok()).unwrap_or_default(),
                token: token.unwrap_or_default().to_owned(),
            }
        })
        .collect()
}

/// Stops the writers, lets everything settle and judges the history; panics with the seed and
/// the first broken rule.
fn judge(
    pg: &Postgres,
    svc: &Service,
    writes: &[Write],
    seed: u64,
    schedule: &[String],
    started: Instant,
) -> Summary {
    svc.settled();
    // What is in the quarantine was acknowledged and is not lost: it waits for an operator
    // (`usersvc journal`), and /health says so. Its outcome is theirs: applied at most once.
    let quarantined = svc.quarantined_tokens();
    let writes: Vec<Write> = writes
        .iter()
        .cloned()
        .map(|mut w| {
            if quarantined.contains(&w.token) {
                w.outcome = Outcome::Unknown("in the quarantine".into());
            }
            w
        })
        .collect();
    let writes = &writes[..];
    let applied = rows(
        pg,
        "SELECT id, rev, coalesce(token, '') FROM applied ORDER BY seq",
    );
    let stored = rows(
        pg,
        "SELECT id, rev, coalesce(doc::json->>'w', '') FROM users ORDER BY id",
    );
    let served = vec![("usersvc".to_owned(), svc.served())];
    let report = schedule.join("\n");
    if let Some(path) = std::env::var_os("USERSVC_FAULT_DUMP") {
        let t0 = writes
            .iter()
            .map(|w| w.invoked)
            .min()
            .unwrap_or_else(Instant::now);
        let mut out = String::new();
        for w in writes {
            out.push_str(&format!(
                "W {} {:?} {:?} {:.3} {:.3} {:?}\n",
                w.token,
                w.ids,
                w.expect,
                (w.invoked - t0).as_secs_f64(),
                (w.completed - t0).as_secs_f64(),
                w.outcome
            ));
        }
        for r in &applied {
            out.push_str(&format!("A {} {} {}\n", r.id, r.rev, r.token));
        }
        std::fs::write(path, out).expect("dump");
    }
    match history::check(writes, &applied, &stored, &served) {
        Ok(summary) => {
            eprintln!("seed {seed}: {summary}\nschedule:\n{report}");
            summary
        }
        Err(v) => panic!(
            "seed {seed}: {v}\n{}(rerun with USERSVC_FAULT_SEED={seed})\nschedule:\n{report}\n{}",
            when_named(&v.0, writes, started),
            svc.log()
        ),
    }
}

/// For each write `violation` names by its token: when it was sent and answered, in the
/// schedule's seconds, so a failure can be placed among the faults.
fn when_named(violation: &str, writes: &[Write], started: Instant) -> String {
    let named = |token: &str| {
        violation.match_indices(token).any(|(at, _)| {
            !violation[at + token.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        })
    };
    writes
        .iter()
        .filter(|w| named(&w.token))
        .map(|w| {
            let since = |t: Instant| t.saturating_duration_since(started).as_secs_f64();
            format!(
                "  {}: sent at {:.3}s, answered at {:.3}s\n",
                w.token,
                since(w.invoked),
                since(w.completed)
            )
        })
        .collect()
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The flags every test here runs with: a short store timeout and backoff, so faults are felt
/// and recovered from within the run.
const FLAGS: &[&str] = &[
    "--store-timeout",
    "1s",
    "--breaker-backoff",
    "300ms",
    "--request-timeout",
    "10s",
];

fn workload(seed: u64) -> Workload {
    Workload {
        clients: 4,
        ids: 6,
        seed,
        timeout: Duration::from_secs(30),
        pause: Duration::from_millis(2),
    }
}

/// A tmpfs mounted for a test, unmounted on drop: a disk that can be filled.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &std::path::Path) -> Self {
        assert!(
            testbed::is_root(),
            "the fault schedule mounts a tmpfs for the journal: run the tests as root (make test does in CI)"
        );
        std::fs::create_dir_all(path).expect("mkdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs"])
            .arg(path)
            .output()
            .expect("mount");
        assert!(
            out.status.success(),
            "mount tmpfs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            path: path.to_owned(),
        }
    }

    /// Fills it to the last byte; remove the file returned to give the space back.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let filler = self.path.join("filler");
        let mut f = std::fs::File::create(&filler).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&[0u8]).is_ok() {}
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a killed server may still hold a file open for a moment.
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}

/// Flips a byte of the checksum of the journal's first record (its bytes, and the write's
/// token in them, intact): at the next start it is quarantined, the records after it replayed.
/// False when nothing was queued.
fn damage_first_record(journal: &std::path::Path) -> bool {
    let Ok(mut bytes) = std::fs::read(journal) else {
        return false;
    };
    if bytes.len() < 8 {
        return false;
    }
    bytes[5] ^= 0x5a;
    std::fs::write(journal, &bytes).expect("damage the journal");
    true
}

#[test]
fn a_seeded_fault_schedule_loses_no_acknowledged_write() {
    let seed = env_or("USERSVC_FAULT_SEED", 20261201);
    let secs = env_or("USERSVC_FAULT_SECS", 60);
    eprintln!("fault schedule: seed {seed}, {secs} s");
    let mut pg = Postgres::start();
    // A synchronous standby, promoted once in the schedule; usersvc knows both hosts.
    let mut standby = Some(pg.standby());
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        pg.port(),
        standby.as_ref().map_or(0, Postgres::port)
    );
    let mut svc = Service::on_url_with_tmpfs(url, FLAGS);
    record_applied(&pg);
    let writers = Writers::start(svc.addr, &workload(seed));
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut schedule = Vec::new();
    let mut bursts = Vec::new();
    let mut old_primaries = Vec::new();
    let short = |rng: &mut Rng| rng.between(Duration::from_millis(300), Duration::from_secs(2));
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(rng.between(Duration::from_millis(500), Duration::from_millis(2500)));
        let at = started.elapsed().as_secs_f32();
        let fault = rng.below(10);
        let outage = short(&mut rng);
        let what = match fault {
            0..=5 => process_fault(fault, &mut pg, &mut svc, outage),
            6 => {
                let n = bursts.len() as u64;
                bursts.extend(testbed::writers::burst(
                    svc.addr,
                    8,
                    990_000,
                    n,
                    Duration::from_secs(30),
                ));
                "a burst of 8 writes of ~1 MB at once".to_owned()
            }
            7 => {
                pg.crash();
                std::thread::sleep(outage);
                svc.kill();
                let damaged = damage_first_record(&svc.journal());
                pg.restart();
                svc.launch();
                format!(
                    "PostgreSQL crashed for {outage:?}, usersvc killed with writes queued, {}",
                    if damaged {
                        "the first queued record's checksum damaged, started again"
                    } else {
                        "nothing queued to damage, started again"
                    }
                )
            }
            8 => {
                let tmpfs = svc.tmpfs.as_ref().expect("the journal's tmpfs");
                let filler = tmpfs.fill();
                pg.crash();
                std::thread::sleep(outage);
                std::fs::remove_file(filler).expect("give the space back");
                pg.restart();
                format!("the journal's disk full while PostgreSQL was down for {outage:?}")
            }
            _ => match standby.take() {
                Some(promoted) => {
                    pg.crash();
                    promoted.promote();
                    old_primaries.push(std::mem::replace(&mut pg, promoted));
                    "PostgreSQL primary crashed (-m immediate), its synchronous standby promoted"
                        .to_owned()
                }
                None => process_fault(0, &mut pg, &mut svc, outage),
            },
        };
        schedule.push(format!("{at:>6.1}s  {what}"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut writes = writers.stop();
    writes.extend(bursts);
    let summary = judge(&pg, &svc, &writes, seed, &schedule, started);
    eprintln!("{} faults in {:?}", schedule.len(), started.elapsed());
    // The schedule must have exercised the journal and the direct path alike.
    assert!(
        summary.committed > 0 && summary.queued > 0,
        "seed {seed}: {summary}"
    );
}

/// The faults on PostgreSQL and usersvc's processes (0-5); what happened, for the schedule.
fn process_fault(fault: u64, pg: &mut Postgres, svc: &mut Service, outage: Duration) -> String {
    match fault {
        0 => {
            pg.crash();
            std::thread::sleep(outage);
            pg.restart();
            format!("PostgreSQL crashed (-m immediate) for {outage:?}")
        }
        1 => {
            pg.pause();
            std::thread::sleep(outage);
            pg.resume();
            format!("PostgreSQL frozen (SIGSTOP) for {outage:?}")
        }
        2 => {
            svc.kill();
            svc.launch();
            "usersvc killed (kill -9) and started again".to_owned()
        }
        3 => {
            svc.upgrade();
            "usersvc upgrade".to_owned()
        }
        4 => {
            pg.crash();
            svc.kill();
            svc.launch();
            std::thread::sleep(outage);
            pg.restart();
            format!(
                "PostgreSQL crashed, usersvc killed and cold-started, store back after {outage:?}"
            )
        }
        _ => {
            pg.crash();
            std::thread::sleep(outage / 2);
            svc.upgrade();
            std::thread::sleep(outage / 2);
            pg.restart();
            format!("PostgreSQL crashed, usersvc upgraded during the outage of {outage:?}")
        }
    }
}

#[test]
fn upgrades_during_an_outage_lose_no_write_and_fail_no_request() {
    let seed = 17;
    let mut pg = Postgres::start();
    // A long backoff: the old server still waits it out, writes queued, while it is replaced.
    let svc = Service::start(
        &pg,
        &[
            "--store-timeout",
            "1s",
            "--breaker-backoff",
            "3s",
            "--request-timeout",
            "10s",
        ],
    );
    record_applied(&pg);
    let started = Instant::now();
    let writers = Writers::start(svc.addr, &workload(seed));
    std::thread::sleep(Duration::from_secs(1));
    pg.stop();
    std::thread::sleep(Duration::from_secs(2));
    pg.restart();
    let queued_before = svc.health()["journal_depth"].as_u64().unwrap_or_default();
    for _ in 0..3 {
        svc.upgrade();
    }
    std::thread::sleep(Duration::from_secs(1));
    let writes = writers.stop();
    let schedule =
        vec!["PostgreSQL stopped for 2 s, then three upgrades while writes are queued".to_owned()];
    let summary = judge(&pg, &svc, &writes, seed, &schedule, started);
    assert!(
        queued_before > 0,
        "no write was queued when the upgrades began"
    );
    let failed: Vec<&Write> = writes
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::NotSent | Outcome::Unknown(_)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} requests failed on the wire, e.g. {:?} ({summary})\n{}",
        failed.len(),
        failed.first(),
        svc.log()
    );
}

/// The history as an asynchronous standby could have left it: the last committed write (the
/// newest on its id) never reached it, so the new primary neither applied nor stores it.
fn lose_the_last_commit(writes: &[Write], applied: &[Row], stored: &[Row]) -> (Vec<Row>, Vec<Row>) {
    let last = applied
        .iter()
        .rev()
        .find(|r| {
            writes
                .iter()
                .any(|w| w.token == r.token && matches!(w.outcome, Outcome::Committed(_)))
                && stored.iter().any(|s| s.id == r.id && s.token == r.token)
        })
        .expect("a committed write is the newest on its id")
        .clone();
    let applied: Vec<Row> = applied.iter().filter(|r| **r != last).cloned().collect();
    let before = applied.iter().rev().find(|r| r.id == last.id).cloned();
    let stored = stored
        .iter()
        .filter(|r| r.id != last.id)
        .cloned()
        .chain(before)
        .collect();
    (applied, stored)
}

/// A primary crashed (`-m immediate`) under writers and its synchronous standby promoted: every
/// acknowledged write is on the new primary, usersvc finds it (libpq's several hosts with
/// target_session_attrs=read-write), and both instances, the one written to and the one that
/// follows it by LISTEN, serve the new primary's table.
#[test]
fn a_failover_to_a_synchronous_standby_loses_no_acknowledged_write() {
    let seed = 31;
    let mut primary = Postgres::start();
    let standby = primary.standby();
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let written = Service::on_url(url.clone(), FLAGS);
    let follower = Service::on_url(url, FLAGS);
    // After the migrations: the trigger replicates to the standby with everything else.
    record_applied(&primary);
    let writers = Writers::start(written.addr, &workload(seed));
    std::thread::sleep(Duration::from_secs(2));
    primary.crash();
    let promoted = Instant::now();
    standby.promote();
    std::thread::sleep(Duration::from_secs(4));
    let writes = writers.stop();
    written.settled();
    follower.settled();
    let applied = rows(
        &standby,
        "SELECT id, rev, coalesce(token, '') FROM applied ORDER BY seq",
    );
    let stored = rows(
        &standby,
        "SELECT id, rev, coalesce(doc::json->>'w', '') FROM users ORDER BY id",
    );
    // The follower learns of the new primary when its LISTEN connection breaks, then reloads:
    // within seconds, not at the instant the written instance is settled.
    let waited = Instant::now();
    eventually(
        "the follower serves the new primary's table",
        Duration::from_secs(30),
        || follower.served() == stored,
    );
    let caught_up = waited.elapsed();
    let served = vec![
        ("written".to_owned(), written.served()),
        ("follower".to_owned(), follower.served()),
    ];
    let summary = history::check(&writes, &applied, &stored, &served)
        .unwrap_or_else(|v| panic!("{v}\n{}\n{}", written.log(), follower.log()));
    let on_new: Vec<&Write> = writes
        .iter()
        .filter(|w| w.invoked > promoted && matches!(w.outcome, Outcome::Committed(_)))
        .collect();
    let after = on_new.len();
    let first = on_new.iter().map(|w| w.completed - promoted).min();
    eprintln!(
        "failover: {summary}; {after} writes committed on the new primary, the first {first:?} after the promotion; the follower caught up {caught_up:?} after the writer settled"
    );
    assert!(
        after > 0,
        "nothing was committed on the new primary: {summary}"
    );

    // The same history had the standby been asynchronous and missed the last commit: the
    // checker says so.
    let (lost_applied, lost_stored) = lose_the_last_commit(&writes, &applied, &stored);
    let lost_served = vec![("written".to_owned(), lost_stored.clone())];
    match history::check(&writes, &lost_applied, &lost_stored, &lost_served) {
        Err(v) => assert!(v.0.starts_with("rule 2"), "{v}"),
        Ok(s) => panic!("a lost acknowledged write passed the checker: {s}"),
    }
}
