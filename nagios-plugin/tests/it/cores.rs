//! check_jsonrpc run by real monitoring cores (Nagios 4 and Icinga 2) through the command
//! definitions shipped in packaging/: the state, output and perfdata each core recorded.

use serde_json::json;
use std::path::{Path, PathBuf};
use testbed::Usersvc;
use testbed::cores::{self, CoreResult, Service};
use testbed::tls_front::Stunnel;

fn plugin_dir() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_check_jsonrpc"))
        .parent()
        .map(Path::to_path_buf)
        .expect("the binary has a directory")
}

fn packaging(file: &str) -> PathBuf {
    testbed::workspace_root().join("packaging").join(file)
}

fn service_with_a_user() -> Usersvc {
    let svc = Usersvc::start();
    svc.result("put_user", json!({"user": {"id": "a", "age": 41}}));
    svc
}

fn assert_core(
    core: &str,
    results: &std::collections::HashMap<String, CoreResult>,
    name: &str,
    state: i64,
    output: &str,
) -> CoreResult {
    let r = results
        .get(name)
        .unwrap_or_else(|| panic!("{core}: no result for {name}: {results:?}"));
    assert_eq!(r.state, state, "{core} {name}: {r:?}");
    assert!(r.output.starts_with("JSONRPC "), "{core} {name}: {r:?}");
    assert!(
        r.output.contains(output),
        "{core} {name}: wanted {output:?} in {r:?}"
    );
    assert!(
        !r.output.contains(" | "),
        "{core} {name}: perfdata must be split off the output: {r:?}"
    );
    r.clone()
}

#[test]
fn nagios4_records_every_state() {
    let svc = service_with_a_user();
    let p = svc.addr().port();
    let checks = [
        ("ok", format!("check_jsonrpc!-p {p} -m ping")),
        (
            "warning",
            format!(
                "check_jsonrpc_method!{p}!get_user!--params '[\"a\"]' --value /age --value-warning 0:40"
            ),
        ),
        (
            "critical",
            format!("check_jsonrpc!-p {p} -m no_such_method"),
        ),
        ("unknown", format!("check_jsonrpc!-p {p} -w abc")),
    ];
    let services: Vec<Service> = checks
        .iter()
        .map(|(n, c)| Service { name: n, check: c })
        .collect();
    let r = cores::nagios(
        &plugin_dir(),
        &[packaging("nagios/check_jsonrpc.cfg")],
        &services,
    );
    let ok = assert_core("nagios", &r, "ok", 0, "JSONRPC OK - ping returned \"pong\"");
    assert!(
        ok.perfdata.starts_with("time=") && ok.perfdata.contains("size="),
        "{ok:?}"
    );
    let warn = assert_core(
        "nagios",
        &r,
        "warning",
        1,
        "/age = 41 (outside warning range 0:40)",
    );
    assert!(warn.perfdata.ends_with("value=41;0:40"), "{warn:?}");
    assert_core(
        "nagios",
        &r,
        "critical",
        2,
        "JSON-RPC error -32601: Method not found",
    );
    assert_core("nagios", &r, "unknown", 3, "invalid range \"abc\"");
}

#[test]
fn icinga2_records_every_state() {
    let svc = service_with_a_user();
    let p = svc.addr().port();
    let checks = [
        (
            "ok",
            format!("check_command = \"jsonrpc\"\nvars.jsonrpc_port = {p}"),
        ),
        (
            "warning",
            format!(
                "check_command = \"jsonrpc\"\nvars.jsonrpc_port = {p}\nvars.jsonrpc_method = \"get_user\"\n\
                 vars.jsonrpc_params = \"[\\\"a\\\"]\"\nvars.jsonrpc_value = \"/age\"\nvars.jsonrpc_value_warning = \"0:40\""
            ),
        ),
        (
            "critical",
            format!(
                "check_command = \"jsonrpc\"\nvars.jsonrpc_port = {p}\nvars.jsonrpc_method = \"get_users\"\n\
                 vars.jsonrpc_count_result = true\nvars.jsonrpc_value_critical = \"5:\"\n\
                 vars.jsonrpc_expect_type = [ \"=array\" ]"
            ),
        ),
        (
            "unknown",
            format!(
                "check_command = \"jsonrpc\"\nvars.jsonrpc_port = {p}\nvars.jsonrpc_warn_time = \"abc\""
            ),
        ),
    ];
    let services: Vec<Service> = checks
        .iter()
        .map(|(n, c)| Service { name: n, check: c })
        .collect();
    let r = cores::icinga(
        &plugin_dir(),
        &[packaging("icinga2/check_jsonrpc.conf")],
        &services,
    );
    let ok = assert_core(
        "icinga2",
        &r,
        "ok",
        0,
        "JSONRPC OK - ping returned \"pong\"",
    );
    assert!(
        ok.perfdata.contains("time=") && ok.perfdata.contains("size="),
        "{ok:?}"
    );
    let warn = assert_core(
        "icinga2",
        &r,
        "warning",
        1,
        "/age = 41 (outside warning range 0:40)",
    );
    assert!(warn.perfdata.contains("value=41;0:40"), "{warn:?}");
    let crit = assert_core(
        "icinga2",
        &r,
        "critical",
        2,
        "count(result) = 1 (outside critical range 5:)",
    );
    assert!(crit.perfdata.contains("count=1;;5:"), "{crit:?}");
    assert_core("icinga2", &r, "unknown", 3, "invalid range \"abc\"");
}

#[test]
fn icinga2_checks_the_certificate_and_presents_a_client_certificate() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    // The core runs the plugin as its own user: it must read the CA and the client's files.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let [ca, cert, key, client_cert, client_key] = testbed::riemann::make_certs(dir.path());
    for f in [&ca, &client_cert, &client_key] {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let svc = Usersvc::start();
    let open = Stunnel::start(dir.path(), svc.addr().port(), &cert, &key, None);
    let mutual = Stunnel::start(dir.path(), svc.addr().port(), &cert, &key, Some(&ca));
    let tls = |port: u16| {
        format!(
            "check_command = \"jsonrpc\"\nvars.jsonrpc_vhost = \"localhost\"\nvars.jsonrpc_port = {port}\n\
             vars.jsonrpc_ssl = true\nvars.jsonrpc_ca_file = \"{}\"\n",
            ca.display()
        )
    };
    let checks = [
        (
            "expiring",
            format!("{}vars.jsonrpc_certificate = \"30,14\"", tls(open.port)),
        ),
        (
            "clientcert",
            format!(
                "{}vars.jsonrpc_clientcert = \"{}\"\nvars.jsonrpc_privatekey = \"{}\"",
                tls(mutual.port),
                client_cert.display(),
                client_key.display()
            ),
        ),
    ];
    let services: Vec<Service> = checks
        .iter()
        .map(|(n, c)| Service { name: n, check: c })
        .collect();
    let r = cores::icinga(
        &plugin_dir(),
        &[packaging("icinga2/check_jsonrpc.conf")],
        &services,
    );
    let crit = assert_core(
        "icinga2",
        &r,
        "expiring",
        2,
        "certificate 'server' expires in 1 days",
    );
    assert!(
        crit.perfdata.contains("certificate_days=1;@~:30;@~:14"),
        "{crit:?}"
    );
    assert_core(
        "icinga2",
        &r,
        "clientcert",
        0,
        "JSONRPC OK - ping returned \"pong\"",
    );
}

/// Nagios keeps /health: CRITICAL through a database outage, while /health/ready (what a load
/// balancer asks) stays 200 because reads are served and writes queued.
#[test]
fn nagios4_sees_the_outage_that_readiness_rides_through() {
    use std::os::unix::fs::PermissionsExt;
    let check_http = Path::new("/usr/lib/nagios/plugins/check_http");
    assert!(
        check_http.exists(),
        "check_http is missing: apt-get install monitoring-plugins-basic (make test does, as root)"
    );
    let plugins = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(plugins.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::os::unix::fs::symlink(check_http, plugins.path().join("check_http")).expect("link");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_check_jsonrpc"),
        plugins.path().join("check_jsonrpc"),
    )
    .expect("link");

    let mut pg = testbed::Postgres::start();
    let svc = Usersvc::start_on(
        &testbed::usersvc::binary(),
        Some(&pg.url()),
        &["--breaker-failures", "1", "--store-timeout", "300ms"],
    );
    svc.result("put_user", json!({"user": {"id": "a"}}));
    pg.stop();
    assert_eq!(
        svc.result("put_user", json!({"user": {"id": "b"}}))["queued"],
        true
    );
    let p = svc.addr().port();
    let health = format!("check_usersvc_health!{p}");
    let ping = format!("check_jsonrpc!-p {p} -m get_user --params '[\"a\"]'");
    // The same through check_jsonrpc: the health method, its status expected. With only a
    // `-m version` check, Nagios stayed green through the outage.
    let health_rpc = format!("check_jsonrpc!-p {p} -m health --expect '/status=\"ok\"'");
    let services = [
        Service {
            name: "health",
            check: &health,
        },
        Service {
            name: "reads",
            check: &ping,
        },
        Service {
            name: "health_rpc",
            check: &health_rpc,
        },
    ];
    let r = cores::nagios(
        plugins.path(),
        &[packaging("nagios/check_jsonrpc.cfg")],
        &services,
    );
    let h = r.get("health").expect("a health result");
    assert_eq!(h.state, 2, "{h:?}");
    assert!(h.output.contains("503"), "{h:?}");
    assert_core("nagios", &r, "reads", 0, "JSONRPC OK - get_user returned");
    let rpc = assert_core("nagios", &r, "health_rpc", 2, "/status");
    assert!(rpc.output.contains("degraded"), "{rpc:?}");
    assert_eq!(svc.get("/health/ready").status, 200);
    assert_eq!(svc.get("/health").status, 503);
}
