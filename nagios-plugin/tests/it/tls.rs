//! check_jsonrpc against a TLS usersvc (real `stunnel` in front of the real service): the
//! certificate's expiry with `-C`, a client certificate the server requires, and the call and
//! the certificate check through a real HTTP proxy (`tinyproxy`).

use super::{Run, check_jsonrpc};
use testbed::Usersvc;
use testbed::tls_front::{Stunnel, Tinyproxy};

fn expect(args: &[&str], env: &[(&str, &str)], code: i32, needles: &[&str]) -> Run {
    let r = check_jsonrpc(args, env);
    assert_eq!(r.code, code, "{args:?}: {}", r.first_line());
    for n in needles {
        assert!(
            r.first_line().contains(n),
            "{args:?}: wanted {n:?} in {}",
            r.first_line()
        );
    }
    r
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn certificate_expiry_is_judged_in_the_same_run_as_the_call() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Valid for 10 days from now: 9 whole days left.
    let [ca, cert, key, _, _] = testbed::riemann::make_certs_valid_for(dir.path(), 10);
    let svc = Usersvc::start();
    let tls = Stunnel::start(dir.path(), svc.addr().port(), &cert, &key, None);
    let p = tls.port.to_string();
    let ca = ca.display().to_string();
    let base = [
        "-H",
        "localhost",
        "-p",
        &p,
        "-S",
        "--ca-file",
        &ca,
        "--expect",
        "=\"pong\"",
    ];
    let with = |extra: &[&'static str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| (*s).to_owned()).collect()
    };

    let r = expect(
        &args(&with(&["-C", "30"])),
        &[],
        1,
        &[
            "JSONRPC WARNING - ",
            "pong",
            "certificate 'server' expires in 9 days",
        ],
    );
    assert!(
        r.first_line().contains("certificate_days=9;@~:30;@~:0;0"),
        "{}",
        r.first_line()
    );
    expect(
        &args(&with(&["-C", "30,14"])),
        &[],
        2,
        &[
            "JSONRPC CRITICAL - ",
            "expires in 9 days",
            "certificate_days=9;@~:30;@~:14;0",
        ],
    );
    expect(
        &args(&with(&["-C", "7"])),
        &[],
        0,
        &["JSONRPC OK - ", "expires in 9 days"],
    );
    // The worse state wins: a failing call stays CRITICAL with a healthy certificate.
    expect(
        &args(&with(&["-C", "7", "--expect", "=\"nope\""])),
        &[],
        2,
        &["JSONRPC CRITICAL - ", "expires in 9 days"],
    );
    // -C on plain HTTP is a usage error.
    expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            &svc.addr().port().to_string(),
            "-C",
            "30",
        ],
        &[],
        3,
        &["JSONRPC UNKNOWN - ", "-C needs https"],
    );
    expect(
        &args(&with(&["-C", "14,30"])),
        &[],
        3,
        &["JSONRPC UNKNOWN - ", "-C"],
    );
}

#[test]
fn a_client_certificate_the_server_requires() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [ca, cert, key, client_cert, client_key] = testbed::riemann::make_certs(dir.path());
    let svc = Usersvc::start();
    let tls = Stunnel::start(dir.path(), svc.addr().port(), &cert, &key, Some(&ca));
    let p = tls.port.to_string();
    let ca = ca.display().to_string();
    let base = ["-H", "localhost", "-p", &p, "-S", "--ca-file", &ca];
    expect(&base, &[], 2, &["JSONRPC CRITICAL - "]);
    let client_cert = client_cert.display().to_string();
    let client_key = client_key.display().to_string();
    let mut with_cert = base.to_vec();
    with_cert.extend(["--client-cert", &client_cert, "--client-key", &client_key]);
    expect(&with_cert, &[], 0, &["JSONRPC OK - ", "pong"]);
    // The certificate check presents it too.
    with_cert.extend(["-C", "0"]);
    expect(&with_cert, &[], 0, &["JSONRPC OK - ", "expires in 1 days"]);
    // One PEM holding both certificate and key.
    let both = dir.path().join("both.pem");
    let text = std::fs::read_to_string(&client_cert).expect("cert")
        + &std::fs::read_to_string(&client_key).expect("key");
    std::fs::write(&both, text).expect("write");
    let both = both.display().to_string();
    let mut one_file = base.to_vec();
    one_file.extend(["--client-cert", &both]);
    expect(&one_file, &[], 0, &["JSONRPC OK - "]);
    let mut missing = base.to_vec();
    missing.extend(["--client-cert", "/nonexistent.pem"]);
    expect(&missing, &[], 3, &["JSONRPC UNKNOWN - ", "--client-cert"]);
}

#[test]
fn through_an_http_proxy_by_flag_and_by_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let [ca, cert, key, _, _] = testbed::riemann::make_certs(dir.path());
    let svc = Usersvc::start();
    let tls = Stunnel::start(dir.path(), svc.addr().port(), &cert, &key, None);
    let proxy = Tinyproxy::start(dir.path());
    let plain = svc.addr().port().to_string();
    let p = tls.port.to_string();
    let ca = ca.display().to_string();
    let url = proxy.url();

    expect(
        &["-H", "127.0.0.1", "-p", &plain, "--proxy", &url],
        &[],
        0,
        &["pong"],
    );
    expect(
        &[
            "-H",
            "localhost",
            "-p",
            &p,
            "-S",
            "--ca-file",
            &ca,
            "-C",
            "0",
            "--proxy",
            &url,
        ],
        &[],
        0,
        &["pong", "expires in 1 days"],
    );
    expect(
        &["-H", "127.0.0.1", "-p", &plain],
        &[("HTTP_PROXY", url.as_str())],
        0,
        &["pong"],
    );
    // NO_PROXY exempts a host: this request goes straight to the service.
    expect(
        &["-H", "127.0.0.1", "-p", &plain],
        &[("HTTP_PROXY", url.as_str()), ("NO_PROXY", "127.0.0.1")],
        0,
        &["pong"],
    );
    let requests = proxy.requests();
    let target = format!("localhost:{p}");
    assert_eq!(
        requests,
        vec![
            // ureq tunnels plain HTTP through CONNECT as well.
            format!("CONNECT 127.0.0.1:{plain} HTTP/1.1"),
            format!("CONNECT {target} HTTP/1.1"),
            format!("CONNECT {target} HTTP/1.1"),
            format!("CONNECT 127.0.0.1:{plain} HTTP/1.1"),
        ],
        "the call and the certificate check through the proxy, NO_PROXY honoured:\n{}",
        proxy.peer.log()
    );
    // A proxy that is not there: CRITICAL, as a connection failure.
    let dead = format!(
        "http://127.0.0.1:{}",
        testbed::process::free_port("127.0.0.1")
    );
    expect(
        &["-H", "127.0.0.1", "-p", &plain, "--proxy", &dead],
        &[],
        2,
        &["JSONRPC CRITICAL - "],
    );
    expect(
        &["-H", "127.0.0.1", "-p", &plain, "--proxy", "proxy:3128"],
        &[],
        3,
        &["--proxy"],
    );
    // A proxy's password never reaches the output.
    let r = expect(
        &[
            "-H",
            "127.0.0.1",
            "-p",
            &plain,
            "--proxy",
            "u:s3cret@proxy:3128",
        ],
        &[],
        3,
        &["--proxy"],
    );
    assert!(!r.first_line().contains("s3cret"), "{}", r.first_line());
    let r = expect(
        &[
            "-H",
            "localhost",
            "-p",
            &p,
            "-S",
            "-C",
            "30",
            "--proxy",
            "https://u:s3cret@127.0.0.1:1",
        ],
        &[],
        3,
        &["http:// proxy only"],
    );
    assert!(!r.first_line().contains("s3cret"), "{}", r.first_line());
    expect(
        &[
            "-H",
            "localhost",
            "-I",
            "127.0.0.1",
            "-p",
            &p,
            "--proxy",
            &url,
        ],
        &[],
        3,
        &["-I and --proxy"],
    );
    // -I names the address to connect to: an environment proxy is not asked.
    let before = proxy.requests().len();
    expect(
        &["-H", "localhost", "-I", "127.0.0.1", "-p", &plain],
        &[("HTTP_PROXY", url.as_str())],
        0,
        &["pong"],
    );
    assert_eq!(proxy.requests().len(), before);
}
