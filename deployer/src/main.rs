use anyhow::Context;
use clap::{Parser, Subcommand};
use deployer::config::Config;
use deployer::deploy::Settings;
use deployer::ssh::{HostKeyPolicy, SshSettings};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "deployer",
    version,
    about = "Capistrano-style releases over SSH to many hosts, all or nothing",
    long_about = "Capistrano-style releases over SSH to many hosts, all or nothing.\n\n\
Each host gets releases/<UTC timestamp>/, a `current` symlink switched atomically, shared/ for \
what outlives releases, revisions.log (JSON lines) and .deploy/ (lock, manifests, bad marks). \
A deploy is staged on every host before any host publishes; a failure before publish removes \
the staged release everywhere, a failure after publish (hooks, health gate) puts every host \
back on its previous release.",
    after_help = "CONFIG (default ./deploy.toml; example: packaging/deploy.toml; paths relative to the file):\n  \
application, deploy_to, keep_releases (5), source (the directory that becomes a release),\n  \
build (run locally first), shared_dirs, shared_files,\n  \
[ssh] user, port, identity (else the SSH agent), known_hosts (~/.ssh/known_hosts),\n  \
[[hosts]] address = \"host[:port]\", roles, deploy_to,\n  \
[hooks] before_publish, after_publish (run in the release directory, with $RELEASE,\n    \
$RELEASE_PATH, $PREVIOUS_RELEASE, $DEPLOY_TO, $REVISION set),\n  \
[health] url (\"{host}\" is replaced) + method (ping), and/or command (a Nagios plugin,\n    \
exit 0 = healthy), retries (10), interval (1s), timeout (10s),\n  \
[riemann] server = \"host:5555\" (deploy events).\n\
Unknown keys are errors. Host keys are checked strictly against known_hosts.\n\n\
EXAMPLES:\n  deployer check\n  deployer deploy --dry-run\n  deployer deploy --rolling 2\n  \
deployer releases --hosts app1.example.com\n  deployer rollback --to 20261123101500\n  \
deployer unlock"
)]
struct Cli {
    /// The deploy configuration
    #[arg(
        short = 'c',
        long = "config",
        default_value = "deploy.toml",
        global = true
    )]
    config: PathBuf,
    /// Only these hosts (as written in the config, or their host names), comma-separated
    #[arg(long, value_delimiter = ',', global = true)]
    hosts: Vec<String>,
    /// Only hosts with this role
    #[arg(long, global = true)]
    role: Option<String>,
    /// Hosts worked on at the same time
    #[arg(long, default_value_t = 16, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    parallel: u16,
    /// Add unknown host keys to known_hosts instead of refusing them (changed keys are still refused)
    #[arg(long, global = true)]
    accept_new_host_keys: bool,
    /// Connect timeout and limit for each remote step, in seconds
    #[arg(long, default_value_t = 10, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    timeout: u64,
    /// Limit for the hooks of one host, in seconds
    #[arg(long, default_value_t = 600, global = true, value_parser = clap::value_parser!(u64).range(1..))]
    hook_timeout: u64,
    /// No stage headings or progress bars on stderr
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Put a new release on every selected host and publish it everywhere, or nowhere
    Deploy {
        /// Print the plan (reads the hosts, changes nothing)
        #[arg(long)]
        dry_run: bool,
        /// Publish N hosts at a time, with the health gate between batches
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        rolling: Option<u16>,
        /// The revision written to REVISION [default: git HEAD of the source, else a content hash]
        #[arg(long)]
        revision: Option<String>,
    },
    /// Switch `current` back to the previous good release (or RELEASE) on every selected host
    Rollback {
        /// The release to go to (a name from `deployer releases`)
        #[arg(long, value_name = "RELEASE")]
        to: Option<String>,
        /// Print what would switch, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// List each host's releases; the current one and bad ones are marked
    Releases,
    /// Remove bad and incomplete releases, and good ones beyond keep_releases (never current)
    Cleanup {
        /// Print what would be removed, change nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Check every host: SSH and host key, deploy_to exists and is writable, lock free
    Check,
    /// Remove a stale lock left by a deploy of yours that died; --force removes anyone's
    Unlock {
        /// Remove the lock whoever holds it
        #[arg(long)]
        force: bool,
    },
}

fn print_results<T>(rows: Vec<(String, Result<T, String>)>, ok: impl Fn(&T) -> String) -> usize {
    let mut table = vec![vec!["HOST".to_owned(), "RESULT".to_owned()]];
    let mut failed = 0;
    for (host, r) in rows {
        let text = match r {
            Ok(v) => ok(&v),
            Err(e) => {
                failed += 1;
                format!("FAILED: {e}")
            }
        };
        table.push(vec![host, text]);
    }
    println!("{}", deployer::report::table(&table));
    failed
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", cli_message("deployer", &e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// A failure as a CLI prints it (DESIGN.md, "Errors, as a CLI prints them"): what failed, with
/// each cause once (a cause already quoted by the message above it is not repeated), then the
/// outermost context, which says what to do, on a line of its own. Never a backtrace.
fn cli_message(program: &str, e: &anyhow::Error) -> String {
    let messages: Vec<String> = e.chain().map(ToString::to_string).collect();
    let (hint, causes) = match messages.split_first() {
        Some((first, rest)) if !rest.is_empty() => (Some(first), rest),
        _ => (None, messages.as_slice()),
    };
    let mut line: Vec<&str> = Vec::new();
    for m in causes {
        if !line.last().is_some_and(|prev| prev.contains(m.as_str())) {
            line.push(m);
        }
    }
    match hint {
        Some(h) => format!(
            "{program}: {}
{h}",
            line.join(": ")
        ),
        None => format!("{program}: {}", line.join(": ")),
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = Config::load(&cli.config).context("fix the deploy configuration")?;
    let targets = cfg
        .targets(&cli.hosts, cli.role.as_deref())
        .map_err(anyhow::Error::msg)?;
    let ssh = SshSettings {
        user: cfg.user(),
        identity: cfg.ssh.identity.clone(),
        known_hosts: cfg.known_hosts(),
        policy: if cli.accept_new_host_keys {
            HostKeyPolicy::AcceptNew
        } else {
            HostKeyPolicy::Strict
        },
        timeout: Duration::from_secs(cli.timeout),
    };
    let mut settings = Settings {
        ssh,
        parallel: usize::from(cli.parallel),
        rolling: None,
        hook_timeout: Duration::from_secs(cli.hook_timeout),
        revision: None,
        quiet: cli.quiet,
        interrupted: Arc::new(AtomicBool::new(false)),
    };
    // First Ctrl-C/SIGTERM: finish the current step, then take the failure path (staged
    // releases removed or hosts rolled back, locks released). A second one exits at once.
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, settings.interrupted.clone())
            .and_then(|_| signal_hook::flag::register(sig, settings.interrupted.clone()))
            .context("installing the signal handler")?;
    }
    match cli.command {
        Command::Deploy {
            dry_run: true,
            rolling,
            revision,
        } => {
            settings.rolling = rolling.map(usize::from);
            settings.revision = revision;
            let (plan, ok) = deployer::deploy::plan(&cfg, &targets, &settings)?;
            print!("{plan}");
            anyhow::ensure!(ok, "a deploy now would fail: see STATUS above");
        }
        Command::Deploy {
            dry_run: false,
            rolling,
            revision,
        } => {
            settings.rolling = rolling.map(usize::from);
            settings.revision = revision;
            let report = deployer::deploy::deploy(&cfg, &targets, &settings)?;
            println!("{}", deployer::report::deploy_summary(&report));
            if let Some(r) = &cfg.riemann {
                let events = deployer::events::deploy_events(&cfg.application, &report);
                if let Err(e) = deployer::events::send(&r.server, &events) {
                    eprintln!("warning: {e}");
                }
            }
            if !report.ok {
                anyhow::bail!(
                    "deploy {} failed on {}",
                    if report.release.is_empty() {
                        "(no release staged)"
                    } else {
                        &report.release
                    },
                    report.failure().unwrap_or_else(|| "a host".into())
                );
            }
            let warned = report.hosts.iter().any(|h| !h.warnings.is_empty());
            anyhow::ensure!(
                !warned,
                "release {} is live, but see the warnings above",
                report.release
            );
        }
        Command::Rollback { to, dry_run } => {
            let moved =
                deployer::rollback::rollback(&cfg, &targets, &settings, to.as_deref(), dry_run)
                    .map_err(anyhow::Error::msg)?;
            let rows = moved
                .into_iter()
                .map(|m| {
                    let from = m.from.unwrap_or_else(|| "-".into());
                    (m.name, m.result.map(|t| format!("{t} (was {from})")))
                })
                .collect();
            let failed = print_results(rows, String::clone);
            anyhow::ensure!(
                failed == 0,
                "rollback failed on {failed} host(s); current was left unchanged on hosts marked unchanged"
            );
        }
        Command::Releases => {
            let hosts = deployer::releases::list(&targets, &settings);
            let mut failed = 0;
            for h in &hosts {
                match &h.failure {
                    Some(f) => {
                        failed += 1;
                        println!(
                            "{} ({})\n  FAILED: {}\n",
                            h.target.name, h.target.deploy_to, f.message
                        );
                    }
                    None => println!(
                        "{}",
                        deployer::report::releases(&h.target.name, &h.target.deploy_to, &h.state)
                    ),
                }
            }
            anyhow::ensure!(failed == 0, "{failed} host(s) could not be read");
        }
        Command::Cleanup { dry_run } => {
            let rows = deployer::releases::cleanup(&cfg, &targets, &settings, dry_run);
            let verb = if dry_run { "would remove" } else { "removed" };
            let failed = print_results(rows, |removed: &Vec<String>| {
                if removed.is_empty() {
                    "nothing to remove".into()
                } else {
                    format!("{verb} {}", removed.join(" "))
                }
            });
            anyhow::ensure!(failed == 0, "cleanup failed on {failed} host(s)");
        }
        Command::Check => {
            let reports = deployer::check::check_all(&targets, &settings.ssh, settings.parallel);
            println!("{}", deployer::check::render(&reports));
            let bad = reports.iter().filter(|r| r.problem.is_some()).count();
            anyhow::ensure!(
                bad == 0,
                "{bad} of {} hosts are not ready to deploy",
                reports.len()
            );
        }
        Command::Unlock { force } => {
            let rows = deployer::lock::unlock(
                &targets,
                &settings.ssh,
                settings.parallel,
                &cfg.user(),
                force,
            );
            let failed = print_results(rows, String::clone);
            anyhow::ensure!(failed == 0, "{failed} host(s) still locked");
        }
    }
    Ok(())
}
