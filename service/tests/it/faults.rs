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
    dir: tempfile::TempDir,
    addr: SocketAddr,
    database_url: String,
    extra: Vec<String>,
    /// The servers this test started itself (an upgrade's are children of the old server).
    peers: Vec<Peer>,
}

impl Service {
    fn start(pg: &Postgres, extra: &[&str]) -> Self {
        let addr = format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .expect("addr");
        let mut s = Self {
            dir: tempfile::tempdir().expect("temp dir"),
            addr,
            database_url: pg.url(),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            peers: Vec::new(),
        };
        s.launch();
        s
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--listen".to_owned(),
            self.addr.to_string(),
            "--database-url".into(),
            self.database_url.clone(),
            "--journal".into(),
            self.path("usersvc.journal").display().to_string(),
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
            !service::lifecycle::pidfile::is_alive(pid)
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

    /// Waits until the journal is replayed and the service is healthy again.
    fn settled(&self) {
        let agent = testbed::http::agent();
        let url = format!("http://{}/health", self.addr);
        eventually("the journal is replayed", Duration::from_secs(90), || {
            let h = testbed::http::get(&agent, &url);
            h.status == 200 && h.json()["journal_depth"] == 0
        });
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
) -> Summary {
    svc.settled();
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
            "seed {seed}: {v}\n(rerun with USERSVC_FAULT_SEED={seed})\nschedule:\n{report}\n{}",
            svc.log()
        ),
    }
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

#[test]
fn a_seeded_fault_schedule_loses_no_acknowledged_write() {
    let seed = env_or("USERSVC_FAULT_SEED", 20261201);
    let secs = env_or("USERSVC_FAULT_SECS", 60);
    eprintln!("fault schedule: seed {seed}, {secs} s");
    let mut pg = Postgres::start();
    let mut svc = Service::start(&pg, FLAGS);
    record_applied(&pg);
    let writers = Writers::start(svc.addr, &workload(seed));
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let mut schedule = Vec::new();
    let short = |rng: &mut Rng| rng.between(Duration::from_millis(300), Duration::from_secs(2));
    while started.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(rng.between(Duration::from_millis(500), Duration::from_millis(2500)));
        let at = started.elapsed().as_secs_f32();
        let fault = rng.below(6);
        let outage = short(&mut rng);
        let what = match fault {
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
        };
        schedule.push(format!("{at:>6.1}s  {what}"));
    }
    std::thread::sleep(Duration::from_millis(500));
    let writes = writers.stop();
    let summary = judge(&pg, &svc, &writes, seed, &schedule);
    eprintln!("{} faults in {:?}", schedule.len(), started.elapsed());
    // The schedule must have exercised the journal and the direct path alike.
    assert!(
        summary.committed > 0 && summary.queued > 0,
        "seed {seed}: {summary}"
    );
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
    let summary = judge(&pg, &svc, &writes, seed, &schedule);
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
