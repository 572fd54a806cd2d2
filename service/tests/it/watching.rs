//! What an operator watches, against the real binary: `GET /metrics` read by a real Prometheus
//! text-format parser (Python's `prometheus_client`, both its OpenMetrics and its classic
//! Prometheus parser) with counts matching the calls made, the token in front of it, and the
//! access log.

use super::bin;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use testbed::Usersvc;

/// Debian's python3 (where python3-prometheus-client installs), not whatever `python3` is first
/// on PATH.
const PYTHON: &str = "/usr/bin/python3";

/// Parses with both of prometheus_client's parsers; prints one JSON object of
/// `name{label="value",…}` → value, from the OpenMetrics parser, after checking the classic
/// parser reads the same samples.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om
from prometheus_client.parser import text_string_to_metric_families as classic
text = sys.stdin.read()
def flat(families):
    out = {}
    for f in families:
        for s in f.samples:
            labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
            out["%s{%s}" % (s.name, labels)] = s.value
    return out
a = flat(om(text))
b = flat(classic(text))
missing = sorted(set(a) - set(b))
if missing:
    sys.exit("the classic parser lost samples: %s" % missing[:5])
print(json.dumps(a))
"#;

fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(
        Path::new(PYTHON).exists(),
        "{PYTHON} is missing: apt-get install python3 python3-prometheus-client (make test does, as root)"
    );
    let mut child = Command::new(PYTHON)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics to python");
    let out = child.wait_with_output().expect("python3 ran");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !err.contains("No module named 'prometheus_client'"),
        "prometheus_client is missing: apt-get install python3-prometheus-client (make test does, as root)"
    );
    assert!(
        out.status.success(),
        "parser refused /metrics: {err}\n{text}"
    );
    serde_json::from_slice(&out.stdout).expect("parser output")
}

fn sample(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no sample {key} in {:#?}", sorted(m)))
}

fn sorted(m: &HashMap<String, f64>) -> Vec<(&String, &f64)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by(|a, b| a.0.cmp(b.0));
    v
}

fn get_with(url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    let agent = testbed::http::agent();
    let mut req = agent.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let mut resp = req.call().expect("GET");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = resp.body_mut().read_to_string().unwrap_or_default();
    (status, ct, body)
}

#[test]
fn metrics_read_by_a_real_parser_count_the_calls_made() {
    let s = Usersvc::start_with(bin(), &["--log", "info,usersvc::access=debug"]);
    for _ in 0..5 {
        assert_eq!(s.result("ping", Value::Null), "pong");
    }
    for id in ["a", "b", "c"] {
        s.result("put_user", json!({"user": {"id": id}}));
    }
    for _ in 0..2 {
        assert_eq!(
            s.call("get_user", json!(["ghost"]))["error"]["code"],
            -32001
        );
    }
    assert_eq!(
        s.call("no_such_method", Value::Null)["error"]["code"],
        -32601
    );
    assert_eq!(s.post(b"{not json").json()["error"]["code"], -32700);
    let batch = s.post(
        br#"[{"jsonrpc":"2.0","method":"ping","id":1},{"jsonrpc":"2.0","method":"ping","id":2},
             {"jsonrpc":"2.0","method":"get_user","params":["a"],"id":3},
             {"jsonrpc":"2.0","method":"ping"}]"#,
    );
    assert_eq!(batch.json().as_array().map(Vec::len), Some(3));

    let (status, content_type, text) = get_with(&format!("{}metrics", s.url()), &[]);
    assert_eq!(status, 200);
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let m = parse_metrics(&text);
    let calls = |method: &str, outcome: &str| {
        sample(
            &m,
            &format!("usersvc_rpc_calls_total{{method=\"{method}\",outcome=\"{outcome}\"}}"),
        )
    };
    assert_eq!(
        calls("ping", "ok"),
        8.0,
        "5 single, 2 in the batch, 1 notification"
    );
    assert_eq!(calls("put_user", "ok"), 3.0);
    assert_eq!(calls("get_user", "ok"), 1.0);
    assert_eq!(calls("get_user", "-32001"), 2.0);
    assert_eq!(
        calls("unknown", "-32601"),
        1.0,
        "a client's method name is no label"
    );
    assert_eq!(calls("invalid", "-32700"), 1.0);
    assert_eq!(
        calls("delete_user", "ok"),
        0.0,
        "every method is there from the start"
    );
    assert!(
        !m.keys().any(|k| k.contains("no_such_method")),
        "unbounded labels"
    );
    assert_eq!(
        sample(
            &m,
            "usersvc_rpc_call_duration_seconds_count{method=\"ping\"}"
        ),
        8.0
    );
    assert_eq!(
        sample(
            &m,
            "usersvc_rpc_call_duration_seconds_bucket{le=\"+Inf\",method=\"put_user\"}"
        ),
        3.0
    );
    assert_eq!(sample(&m, "usersvc_rpc_batch_size_count{}"), 1.0);
    assert_eq!(sample(&m, "usersvc_rpc_batch_size_sum{}"), 4.0);
    assert_eq!(
        sample(&m, "usersvc_http_responses_total{status=\"200\"}"),
        13.0
    );
    assert_eq!(sample(&m, "usersvc_http_requests_in_flight{}"), 0.0);
    assert_eq!(
        sample(
            &m,
            "usersvc_build_info{release=\"\",revision=\"\",version=\"0.1.0\"}"
        ),
        1.0
    );
    assert_eq!(sample(&m, "usersvc_breaker_state{state=\"closed\"}"), 1.0);
    assert_eq!(sample(&m, "usersvc_breaker_state{state=\"open\"}"), 0.0);
    assert_eq!(sample(&m, "usersvc_journal_depth{}"), 0.0);
    assert_eq!(sample(&m, "usersvc_snapshot_users{}"), 3.0);
    assert_eq!(sample(&m, "usersvc_write_batch_size_sum{}"), 3.0);
    assert!(sample(&m, "usersvc_write_batch_size_count{}") >= 1.0);
    assert_eq!(sample(&m, "usersvc_background_tasks_failed{}"), 0.0);

    // The access log: every call at debug, a failed one at info, with its id and batch index.
    let log = s.log();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["target"] == "usersvc::access")
        .collect();
    assert_eq!(lines.len(), 5 + 3 + 2 + 1 + 1 + 4, "{log}");
    assert!(
        lines.iter().any(|l| l["level"] == "INFO"
            && l["message"] == "call failed"
            && l["method"] == "get_user"
            && l["code"] == -32001
            && l["us"].is_u64()),
        "{log}"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"
            && l["method"] == "get_user"
            && l["id"] == "3"
            && l["batch_index"] == 2),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["method"] == "-" && l["code"] == -32700 && l.get("id").is_none()),
        "a body that is not JSON: {log}"
    );
    assert!(!log.contains('\x1b'), "colour in a piped log: {log}");
}

#[test]
fn metrics_sit_behind_the_token_unless_made_public() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cret\n").expect("token file");
    let token = token.to_str().expect("utf-8 path");
    let s = Usersvc::start_with(bin(), &["--auth-token-file", token]);
    let url = format!("{}metrics", s.url());
    assert_eq!(get_with(&url, &[]).0, 401);
    assert_eq!(get_with(&url, &[("authorization", "Bearer wrong")]).0, 401);
    let (status, _, text) = get_with(&url, &[("authorization", "Bearer s3cret")]);
    assert_eq!(status, 200);
    assert!(text.contains("usersvc_build_info"), "{text}");
    // The probes stay open for load balancers and Nagios.
    for probe in ["health", "health/live", "health/ready"] {
        assert_eq!(
            get_with(&format!("{}{probe}", s.url()), &[]).0,
            200,
            "{probe}"
        );
    }
    drop(s);

    let public = Usersvc::start_with(bin(), &["--auth-token-file", token, "--metrics-public"]);
    assert_eq!(get_with(&format!("{}metrics", public.url()), &[]).0, 200);
    let post = public.post(br#"{"jsonrpc":"2.0","method":"ping","id":1}"#);
    assert_eq!(post.status, 401, "calls still need the token");
}

/// Log fields are plain values, absent when there is none: `"revision":"None"` (Rust's Debug text
/// of an Option) broke `jq .revision` and every log filter.
#[test]
fn log_fields_are_plain_values() {
    // testbed's usersvc logs JSON lines.
    let s = testbed::Usersvc::start_with(env!("CARGO_BIN_EXE_usersvc").as_ref(), &[]);
    let log = s.log();
    let line = log
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap_or_else(|| panic!("no start line:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert!(v.get("addr").is_some(), "{line}");
    // Outside a release there is no revision: the field is absent, never "None".
    assert!(
        v.get("revision").is_none() && v.get("release").is_none(),
        "{line}"
    );
    assert!(!log.contains("\"None\"") && !log.contains("Some("), "{log}");
}
