//! A history of writes and what the database applied, and the checker that judges them (in the
//! manner of Jepsen's checkers): every client write is recorded with what it was told, every
//! revision the database applied is recorded by a trigger, and `check` says whether the two
//! agree. Each write carries a unique token in its document, so an applied revision names the
//! write that made it.
//!
//! The rules, checked in this order (the first broken one is reported):
//! 1. every applied revision was made by a write some client sent;
//! 2. every acknowledged write (`rev` or `queued`) is applied exactly once, on each of its ids;
//!    a write refused with an error, or never sent, is not applied; one whose outcome is unknown
//!    (a timeout, a broken connection) is applied at most once;
//! 3. a committed write's answered `rev` is the revision it was applied at, and a conditional
//!    write (`rev: n`) that was acknowledged was applied at revision n + 1;
//! 4. for each id, the applied revisions form one unbroken sequence 1, 2, 3, …;
//! 5. real-time order: a write acknowledged before another was sent is applied before it;
//! 6. the stored document of each id is the last one applied (so it is the last acknowledged
//!    write's, or a later one whose outcome was unknown);
//! 7. what each running instance serves (`get_users`) equals what is stored.

use std::collections::HashMap;
use std::time::Instant;

/// What a client was told.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Committed, at these revisions (one per id).
    Committed(Vec<i64>),
    /// Queued in the journal, to be applied later.
    Queued,
    /// A JSON-RPC error that says nothing changed (the code and message).
    Refused(String),
    /// The connection could not be made: nothing was sent.
    NotSent,
    /// A timeout, a broken connection, an answer that says the outcome is unknown.
    Unknown(String),
}

impl Outcome {
    pub fn acknowledged(&self) -> bool {
        matches!(self, Outcome::Committed(_) | Outcome::Queued)
    }
}

/// One client write: `put_user` (one id) or `put_users` (several), carrying `token`.
#[derive(Debug, Clone)]
pub struct Write {
    pub token: String,
    pub ids: Vec<String>,
    /// The `rev` a conditional write expected (0: create only).
    pub expect: Option<i64>,
    pub invoked: Instant,
    pub completed: Instant,
    pub outcome: Outcome,
}

/// One revision of one id: as applied (in commit order), stored, or served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub id: String,
    pub rev: i64,
    /// The token of the write whose document this is.
    pub token: String,
}

/// The first rule a history breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a history held, for the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub writes: usize,
    pub committed: usize,
    pub queued: usize,
    pub refused: usize,
    pub not_sent: usize,
    pub unknown: usize,
    pub applied: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} writes: {} committed, {} queued, {} refused, {} not sent, {} unknown; {} revisions applied",
            self.writes,
            self.committed,
            self.queued,
            self.refused,
            self.not_sent,
            self.unknown,
            self.applied
        )
    }
}

fn violation<T>(rule: u8, text: String) -> Result<T, Violation> {
    Err(Violation(format!("rule {rule}: {text}")))
}

/// A write's token and one of its ids.
type Key<'a> = (&'a str, &'a str);
/// Where each write's revisions were applied: positions in `applied`, by (token, id).
type Places<'a> = HashMap<Key<'a>, Vec<usize>>;

/// Judges `writes` against `applied` (every revision the database applied, in commit order),
/// `stored` (the table at the end) and `served` (each running instance's `get_users`, named).
/// Each rule is a function of its own, checked in the module's order.
pub fn check(
    writes: &[Write],
    applied: &[Row],
    stored: &[Row],
    served: &[(String, Vec<Row>)],
) -> Result<Summary, Violation> {
    let places = sent_by_a_client(writes, applied)?;
    let mut position: HashMap<Key, usize> = HashMap::new();
    for w in writes {
        position.extend(applied_once_at_its_rev(w, &places, applied)?);
    }
    let last = unbroken_revisions(applied)?;
    real_time_order(writes, &position)?;
    stored_is_last_applied(&last, stored)?;
    served_is_stored(stored, served)?;
    Ok(summary(writes, applied))
}

fn summary(writes: &[Write], applied: &[Row]) -> Summary {
    let mut s = Summary {
        writes: writes.len(),
        applied: applied.len(),
        ..Summary::default()
    };
    for w in writes {
        match &w.outcome {
            Outcome::Committed(_) => s.committed += 1,
            Outcome::Queued => s.queued += 1,
            Outcome::Refused(_) => s.refused += 1,
            Outcome::NotSent => s.not_sent += 1,
            Outcome::Unknown(_) => s.unknown += 1,
        }
    }
    s
}

/// Rule 1: every applied revision was made by a write some client sent. Where each landed.
fn sent_by_a_client<'a>(writes: &[Write], applied: &'a [Row]) -> Result<Places<'a>, Violation> {
    let sent: std::collections::HashSet<&str> = writes.iter().map(|w| w.token.as_str()).collect();
    let mut places: Places = HashMap::new();
    for (pos, row) in applied.iter().enumerate() {
        if !sent.contains(row.token.as_str()) {
            return violation(
                1,
                format!(
                    "{} rev {} was applied with token {:?}, which no client sent",
                    row.id, row.rev, row.token
                ),
            );
        }
        places
            .entry((row.token.as_str(), row.id.as_str()))
            .or_default()
            .push(pos);
    }
    Ok(places)
}

/// Rules 2 and 3 for one write: applied as often as its outcome allows, on each of its ids,
/// and at the revision it was answered (or expected). Where it landed, per id.
fn applied_once_at_its_rev<'w>(
    w: &'w Write,
    places: &Places,
    applied: &[Row],
) -> Result<Vec<(Key<'w>, usize)>, Violation> {
    let mut landed = Vec::new();
    for (i, id) in w.ids.iter().enumerate() {
        let found = places
            .get(&(w.token.as_str(), id.as_str()))
            .map_or(&[][..], Vec::as_slice);
        let allowed = match &w.outcome {
            Outcome::Committed(_) | Outcome::Queued => 1..=1,
            Outcome::Refused(_) | Outcome::NotSent => 0..=0,
            Outcome::Unknown(_) => 0..=1,
        };
        if !allowed.contains(&found.len()) {
            let what = match (w.outcome.acknowledged(), found.len()) {
                (true, 0) => "an acknowledged write was lost",
                (false, _) if allowed == (0..=0) => "a write that was refused was applied",
                _ => "a write was applied more than once",
            };
            let (token, outcome, n) = (&w.token, &w.outcome, found.len());
            return violation(
                2,
                format!("{what}: {token} on {id} ({outcome:?}) applied {n} times"),
            );
        }
        let Some(&pos) = found.first() else {
            continue;
        };
        landed.push(((w.token.as_str(), id.as_str()), pos));
        at_its_rev(w, i, applied[pos].rev)?;
    }
    Ok(landed)
}

/// Rule 3: the `i`th id of `w`, applied at `rev`, was answered that revision, and an
/// acknowledged conditional write landed right after the revision it expected.
fn at_its_rev(w: &Write, i: usize, rev: i64) -> Result<(), Violation> {
    let id = &w.ids[i];
    if let Outcome::Committed(revs) = &w.outcome
        && revs.get(i) != Some(&rev)
    {
        let answered = revs.get(i);
        return violation(
            3,
            format!(
                "{} on {id} was answered rev {answered:?} but applied at rev {rev}",
                w.token
            ),
        );
    }
    if let (true, Some(expect)) = (w.outcome.acknowledged(), w.expect)
        && rev != expect + 1
    {
        return violation(
            3,
            format!(
                "{} on {id} expected rev {expect} and was acknowledged, but applied at rev {rev}",
                w.token
            ),
        );
    }
    Ok(())
}

/// Rule 4: for each id, the applied revisions run 1, 2, 3, … The last applied row per id.
fn unbroken_revisions(applied: &[Row]) -> Result<HashMap<&str, &Row>, Violation> {
    let mut last: HashMap<&str, &Row> = HashMap::new();
    for row in applied {
        let next = last.get(row.id.as_str()).map_or(1, |r| r.rev + 1);
        if row.rev != next {
            return violation(
                4,
                format!(
                    "{} went to rev {} ({}) after rev {} : revisions must run 1, 2, 3, …",
                    row.id,
                    row.rev,
                    row.token,
                    next - 1
                ),
            );
        }
        last.insert(row.id.as_str(), row);
    }
    Ok(last)
}

/// Rule 5, per id: with the acknowledged writes sorted by completion, each write lands after
/// every one completed before it was sent.
fn real_time_order(writes: &[Write], position: &HashMap<Key, usize>) -> Result<(), Violation> {
    let mut per_id: HashMap<&str, Vec<(&Write, usize)>> = HashMap::new();
    for w in writes.iter().filter(|w| w.outcome.acknowledged()) {
        for id in &w.ids {
            if let Some(&pos) = position.get(&(w.token.as_str(), id.as_str())) {
                per_id.entry(id.as_str()).or_default().push((w, pos));
            }
        }
    }
    for (id, mut list) in per_id {
        let mut by_invocation = list.clone();
        list.sort_by_key(|(w, _)| w.completed);
        by_invocation.sort_by_key(|(w, _)| w.invoked);
        let mut done = 0;
        let mut latest: Option<(&Write, usize)> = None;
        for (w, pos) in by_invocation {
            while done < list.len() && list[done].0.completed < w.invoked {
                if latest.is_none_or(|(_, p)| list[done].1 > p) {
                    latest = Some(list[done]);
                }
                done += 1;
            }
            if let Some((before, p)) = latest
                && pos < p
            {
                return violation(
                    5,
                    format!(
                        "on {id}, {} was acknowledged before {} was sent, but applied after it",
                        before.token, w.token
                    ),
                );
            }
        }
    }
    Ok(())
}

/// Rule 6: the table holds, for each id, the last revision applied, and nothing else.
fn stored_is_last_applied(last: &HashMap<&str, &Row>, stored: &[Row]) -> Result<(), Violation> {
    let stored_by_id: HashMap<&str, &Row> = stored.iter().map(|r| (r.id.as_str(), r)).collect();
    for (id, row) in last {
        match stored_by_id.get(id) {
            Some(s) if *s == *row => {}
            other => {
                return violation(
                    6,
                    format!("{id}: last applied {row:?}, but the table holds {other:?}"),
                );
            }
        }
    }
    if let Some(extra) = stored.iter().find(|r| !last.contains_key(r.id.as_str())) {
        return violation(6, format!("the table holds {extra:?}, never applied"));
    }
    Ok(())
}

/// Rule 7: what each running instance serves is what is stored.
fn served_is_stored(stored: &[Row], served: &[(String, Vec<Row>)]) -> Result<(), Violation> {
    let mut b = stored.to_vec();
    b.sort_by(|x, y| x.id.cmp(&y.id));
    for (name, rows) in served {
        let mut a = rows.clone();
        a.sort_by(|x, y| x.id.cmp(&y.id));
        if a != b {
            let diff = a
                .iter()
                .zip(&b)
                .find(|(x, y)| x != y)
                .map(|(x, y)| format!("serves {x:?}, stored {y:?}"))
                .unwrap_or_else(|| format!("serves {} users, stored {}", a.len(), b.len()));
            return violation(7, format!("{name}: {diff}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Writes on "a": w0 committed, w1 queued (sent after w0 answered), w2 refused.
    fn history() -> (Vec<Write>, Vec<Row>) {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let write = |token: &str, from, to, outcome| Write {
            token: token.into(),
            ids: vec!["a".into()],
            expect: None,
            invoked: at(from),
            completed: at(to),
            outcome,
        };
        let writes = vec![
            write("w0", 0, 1, Outcome::Committed(vec![1])),
            write("w1", 2, 3, Outcome::Queued),
            write("w2", 2, 3, Outcome::Refused("-32002".into())),
            write("w3", 4, 5, Outcome::Unknown("timed out".into())),
        ];
        let row = |rev, token: &str| Row {
            id: "a".into(),
            rev,
            token: token.into(),
        };
        (writes, vec![row(1, "w0"), row(2, "w1")])
    }

    fn stored_of(applied: &[Row]) -> Vec<Row> {
        applied.last().cloned().into_iter().collect()
    }

    #[test]
    fn a_sound_history_passes() {
        let (writes, applied) = history();
        let stored = stored_of(&applied);
        let served = vec![("usersvc".to_owned(), stored.clone())];
        let summary = check(&writes, &applied, &stored, &served).expect("sound");
        assert_eq!(
            (summary.committed, summary.queued, summary.unknown),
            (1, 1, 1)
        );
    }

    #[test]
    fn a_lost_write_fails() {
        let (writes, mut applied) = history();
        applied.pop();
        let stored = stored_of(&applied);
        let e = check(&writes, &applied, &stored, &[]).expect_err("lost");
        assert!(
            e.0.starts_with("rule 2: an acknowledged write was lost: w1"),
            "{e}"
        );
    }

    #[test]
    fn a_write_applied_twice_fails() {
        let (writes, mut applied) = history();
        applied.push(Row {
            id: "a".into(),
            rev: 3,
            token: "w1".into(),
        });
        let stored = stored_of(&applied);
        let e = check(&writes, &applied, &stored, &[]).expect_err("twice");
        assert!(e.0.contains("applied more than once: w1"), "{e}");
    }

    #[test]
    fn every_other_rule_catches_its_fault() {
        let (writes, applied) = history();
        let stored = stored_of(&applied);
        let row = |rev, token: &str| Row {
            id: "a".into(),
            rev,
            token: token.into(),
        };
        let fails = |applied: &[Row], stored: &[Row], served: &[(String, Vec<Row>)]| {
            check(&writes, applied, stored, served)
                .expect_err("must fail")
                .0
        };
        let unknown = [applied.clone(), vec![row(3, "nobody")]].concat();
        assert!(fails(&unknown, &stored, &[]).starts_with("rule 1"));
        let refused = [applied.clone(), vec![row(3, "w2")]].concat();
        assert!(fails(&refused, &stored, &[]).contains("refused was applied"));
        let wrong_rev = vec![row(2, "w0"), row(3, "w1")];
        assert!(fails(&wrong_rev, &stored, &[]).starts_with("rule 3"));
        let gap = vec![row(1, "w0"), row(3, "w1")];
        assert!(fails(&gap, &gap[1..], &[]).starts_with("rule 4"));
        let reordered = vec![row(1, "w1"), row(2, "w0")];
        let e = fails(&reordered, &reordered[1..], &[]);
        assert!(e.starts_with("rule 3") || e.starts_with("rule 5"), "{e}");
        assert!(fails(&applied, &[row(1, "w0")], &[]).starts_with("rule 6"));
        let stale = vec![("usersvc".to_owned(), vec![row(1, "w0")])];
        assert!(fails(&applied, &stored, &stale).starts_with("rule 7"));
    }

    #[test]
    fn real_time_order_is_checked_on_its_own() {
        // Two queued writes (no revisions answered): w1 sent after w0 was acknowledged, but the
        // database applied w1 first.
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let write = |token: &str, from, to| Write {
            token: token.into(),
            ids: vec!["a".into()],
            expect: None,
            invoked: at(from),
            completed: at(to),
            outcome: Outcome::Queued,
        };
        let writes = vec![write("w0", 0, 1), write("w1", 2, 3)];
        let row = |rev, token: &str| Row {
            id: "a".into(),
            rev,
            token: token.into(),
        };
        let applied = vec![row(1, "w1"), row(2, "w0")];
        let e = check(&writes, &applied, &applied[1..], &[]).expect_err("reordered");
        assert!(e.0.starts_with("rule 5"), "{e}");
    }
}
