//! check_jsonrpc's integration tests, one binary: the plugin against real servers, TLS fronts and
//! real Nagios 4 and Icinga 2 cores.
//! One binary links once: on a 2-core machine each test binary cost a link of the whole crate.

mod cores;
mod plugin;
mod tls;

use std::process::Command;

/// One run of check_jsonrpc: its exit code and what it wrote.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn first_line(&self) -> &str {
        self.stdout.lines().next().unwrap_or("")
    }
}

/// `check_jsonrpc ARGS` with `env` set, and no proxy taken from the test's own environment.
fn check_jsonrpc(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_check_jsonrpc"));
    cmd.args(args);
    for v in [
        "ALL_PROXY",
        "HTTPS_PROXY",
        "HTTP_PROXY",
        "https_proxy",
        "http_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(v);
    }
    let out = cmd
        .envs(env.iter().copied())
        .output()
        .expect("run check_jsonrpc");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
