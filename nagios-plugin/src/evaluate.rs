//! Judging a complete HTTP response, without I/O: the HTTP status and content type, the
//! JSON-RPC envelope, the `--expect*` assertions, the `--value`/`--count` thresholds and the
//! response time. Every rule is testable without a socket.

use crate::assertion::{Measure, brief, show};
use crate::config::CheckConfig;
use crate::envelope::{self, Answer};
use crate::outcome::Outcome;
use plugin_api::{Perf, State, judge, num};
use serde_json::Value;
use toolkit_core::media_type;

/// Judges a complete HTTP response (separate from I/O so every rule is testable without a socket).
pub fn evaluate(
    cfg: &CheckConfig,
    status: u16,
    reason: Option<&str>,
    content_type: &str,
    body: &[u8],
    elapsed: f64,
) -> Outcome {
    let time_perf = Perf::new("time", elapsed, "s")
        .thresholds(cfg.warning.as_ref(), cfg.critical.as_ref())
        .bounds(Some(0.0), Some(cfg.timeout.as_secs_f64()));
    let size_perf = Perf::new("size", body.len() as f64, "B").bounds(Some(0.0), None);
    let mut perfdata = vec![time_perf, size_perf];
    let result = match result_of(cfg, status, reason, content_type, body) {
        Ok(result) => result,
        Err(why) => {
            return Outcome {
                state: State::Critical,
                summary: why,
                perfdata,
                details: Vec::new(),
            };
        }
    };
    let mut verdict = Verdict::new();
    verdict.assertions(cfg, &result);
    perfdata.extend(verdict.measure(cfg, &result));
    verdict.response_time(cfg, elapsed);
    Outcome {
        state: verdict.state,
        summary: verdict.summary(cfg, &result, elapsed),
        perfdata,
        details: Vec::new(),
    }
}

/// A 401, with what to do: send a token, or check the one sent.
fn unauthorized(cfg: &CheckConfig, http: &str) -> String {
    let sent = cfg
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("authorization"));
    if sent {
        format!("{http}: the server refused the credentials sent (check the token)")
    } else {
        format!(
            "{http}: the server wants credentials (--bearer-file FILE, or --authorization-file)"
        )
    }
}

/// The call's result, or why the answer is CRITICAL before any expectation is looked at: a
/// non-2xx status, a body that is not JSON, a broken envelope, or a JSON-RPC error.
fn result_of(
    cfg: &CheckConfig,
    status: u16,
    reason: Option<&str>,
    content_type: &str,
    body: &[u8],
) -> Result<Value, String> {
    if !(200..300).contains(&status) {
        let http = format!("HTTP {status} {}", reason.unwrap_or(""))
            .trim_end()
            .to_owned();
        // Some servers (legacy bitcoind) answer a JSON-RPC error with a non-2xx status: its
        // code and message say what went wrong, the status alone does not.
        if let Ok(Answer::Error {
            code,
            message,
            data,
        }) = envelope::validate(body, &cfg.id)
        {
            let error = rpc_error(cfg, code, &message, data.as_ref());
            return Err(format!("{error} ({http})"));
        }
        if status == 401 {
            return Err(unauthorized(cfg, &http));
        }
        if !content_type.is_empty() && !media_type::is_json(content_type) {
            return Err(format!(
                "{http} ({content_type} body, not a JSON-RPC response)"
            ));
        }
        return Err(http);
    }
    if !media_type::is_json(content_type) {
        let shown = if content_type.is_empty() {
            "missing"
        } else {
            content_type
        };
        return Err(format!(
            "HTTP {status} but Content-Type is {shown}, not application/json"
        ));
    }
    match envelope::validate(body, &cfg.id).map_err(|v| v.to_string())? {
        Answer::Result(result) => Ok(result),
        Answer::Error {
            code,
            message,
            data,
        } => Err(rpc_error(cfg, code, &message, data.as_ref())),
    }
}

fn rpc_error(cfg: &CheckConfig, code: i64, message: &str, data: Option<&Value>) -> String {
    let data = data.map(|d| format!(" ({})", brief(d))).unwrap_or_default();
    // The server's words: escaped and clipped, never obeyed by the operator's terminal.
    let message = toolkit_core::terminal::value(message);
    format!("{}: JSON-RPC error {code}: {message}{data}", cfg.method)
}

/// The checks of a result, each adding to the state and to what the summary says.
struct Verdict {
    state: State,
    problems: Vec<String>,
    /// The measured value's line, when within its thresholds.
    measured: Option<String>,
}

impl Verdict {
    fn new() -> Self {
        Self {
            state: State::Ok,
            problems: Vec::new(),
            measured: None,
        }
    }

    fn fails(&mut self, state: State, why: String) {
        self.state = self.state.worst(state);
        self.problems.push(why);
    }

    /// `--expect*`: each one not met is CRITICAL.
    fn assertions(&mut self, cfg: &CheckConfig, result: &Value) {
        for a in &cfg.assertions {
            if let Some(why) = a.failure(result) {
                self.fails(State::Critical, why);
            }
        }
    }

    /// `--value`/`--count` against their thresholds; its perfdata when there is a value.
    fn measure(&mut self, cfg: &CheckConfig, result: &Value) -> Option<Perf> {
        let m = cfg.measure.as_ref()?;
        let v = match m.extract(result) {
            Ok(v) => v,
            Err(why) => {
                self.fails(State::Critical, why);
                return None;
            }
        };
        let what = match m {
            Measure::Value(p) => show(p).to_owned(),
            Measure::Count(p) => format!("count({})", show(p)),
        };
        let (state, range) = judge(v, cfg.value_warning.as_ref(), cfg.value_critical.as_ref());
        let note = range
            .map(|r| format!(" (outside {} range {r})", range_name(state)))
            .unwrap_or_default();
        let line = format!("{what} = {}{note}", num(v));
        if state == State::Ok {
            self.measured = Some(line);
        } else {
            self.fails(state, line);
        }
        let label = cfg
            .label
            .clone()
            .unwrap_or_else(|| m.default_label().to_owned());
        Some(
            Perf::new(label, v, "")
                .thresholds(cfg.value_warning.as_ref(), cfg.value_critical.as_ref()),
        )
    }

    /// `-w`/`-c` on the response time.
    fn response_time(&mut self, cfg: &CheckConfig, elapsed: f64) {
        let (state, _) = judge(elapsed, cfg.warning.as_ref(), cfg.critical.as_ref());
        if state != State::Ok {
            let flag = if state == State::Critical { "-c" } else { "-w" };
            self.fails(
                state,
                format!("response time {elapsed:.3} s outside {flag} range"),
            );
        }
    }

    /// The first line: what went wrong, or what was returned and met.
    fn summary(&self, cfg: &CheckConfig, result: &Value, elapsed: f64) -> String {
        let mut s = if !self.problems.is_empty() {
            format!("{}: {}", cfg.method, self.problems.join(", "))
        } else if let Some(m) = &self.measured {
            format!("{} returned, {m}", cfg.method)
        } else {
            format!("{} returned {}", cfg.method, brief(result))
        };
        if self.problems.is_empty() && !cfg.assertions.is_empty() {
            let n = cfg.assertions.len();
            let plural = if n == 1 { "" } else { "s" };
            s.push_str(&format!(", {n} expectation{plural} met"));
        }
        s.push_str(&format!(" in {elapsed:.3} s"));
        s
    }
}

/// The range that decided `state`, as messages name it.
fn range_name(state: State) -> &'static str {
    if state == State::Critical {
        "critical"
    } else {
        "warning"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assertion::Assertion;
    use serde_json::json;

    fn cfg() -> CheckConfig {
        let mut c = CheckConfig::new("http://x/", "get_users");
        c.id = json!(7);
        c
    }

    fn judge(c: &CheckConfig, body: &str) -> Outcome {
        evaluate(
            c,
            200,
            Some("OK"),
            "application/json",
            body.as_bytes(),
            0.01,
        )
    }

    #[test]
    fn http_level_failures() {
        let c = cfg();
        let o = evaluate(&c, 502, Some("Bad Gateway"), "text/html", b"<html>", 0.01);
        assert_eq!(o.state, State::Critical);
        assert!(o.summary.contains("HTTP 502 Bad Gateway"), "{}", o.summary);
        // A JSON-RPC error carried by a 500 (legacy bitcoind): its code and message, and the
        // status.
        let body = br#"{"jsonrpc":"2.0","error":{"code":-8,"message":"Block height out of range"},"id":7}"#;
        let o = evaluate(
            &c,
            500,
            Some("Internal Server Error"),
            "application/json",
            body,
            0.1,
        );
        assert_eq!(o.state, State::Critical);
        assert!(
            o.summary
                .contains("JSON-RPC error -8: Block height out of range")
                && o.summary.contains("HTTP 500"),
            "{}",
            o.summary
        );
        let o = evaluate(&c, 200, Some("OK"), "text/html", b"<html>", 0.01);
        assert!(
            o.summary.contains("Content-Type is text/html"),
            "{}",
            o.summary
        );
    }

    #[test]
    fn thresholds_and_assertions() {
        let mut c = cfg();
        c.measure = Some(Measure::Count("".into()));
        c.value_warning = Some("2".parse().expect("range"));
        c.value_critical = Some("5".parse().expect("range"));
        c.assertions
            .push(Assertion::parse_type("=array").expect("valid"));
        let ok = judge(&c, r#"{"jsonrpc":"2.0","result":[1,2],"id":7}"#);
        assert_eq!(ok.state, State::Ok, "{}", ok.render());
        assert!(ok.render().starts_with("JSONRPC OK - get_users returned, count(result) = 2, 1 expectation met in 0.010 s | time=0.01s;;;0;10 size="));
        assert!(ok.render().ends_with(" count=2;2;5"), "{}", ok.render());
        let warn = judge(&c, r#"{"jsonrpc":"2.0","result":[1,2,3],"id":7}"#);
        assert_eq!(warn.state, State::Warning, "{}", warn.render());
        let crit = judge(&c, r#"{"jsonrpc":"2.0","result":[1,2,3,4,5,6],"id":7}"#);
        assert_eq!(crit.state, State::Critical);
        assert!(
            crit.summary
                .contains("count(result) = 6 (outside critical range 5)"),
            "{}",
            crit.summary
        );
        let wrong = judge(&c, r#"{"jsonrpc":"2.0","result":{"a":1},"id":7}"#);
        assert_eq!(wrong.state, State::Critical);
        assert!(
            wrong
                .summary
                .contains("result is an object, expected array"),
            "{}",
            wrong.summary
        );
    }

    #[test]
    fn response_time_thresholds() {
        let mut c = cfg();
        c.warning = Some("0.5".parse().expect("range"));
        c.critical = Some("1".parse().expect("range"));
        let body = r#"{"jsonrpc":"2.0","result":"pong","id":7}"#;
        let at = |t: f64| evaluate(&c, 200, None, "application/json", body.as_bytes(), t).state;
        assert_eq!(at(0.1), State::Ok);
        assert_eq!(at(0.7), State::Warning);
        assert_eq!(at(1.5), State::Critical);
    }
}
