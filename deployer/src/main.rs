//! `deployer`: parses the command line and runs the command; the library does the rest.

use anyhow::Context;
use clap::{Parser, Subcommand};
use deployer::{Config, HistoryEntry, HostKeyPolicy, Options, Outcome, Settings};
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "deployer",
    version,
    about = "Capistrano-style releases over SSH to many hosts, all or nothing",
    long_about = "Capistrano-style releases over SSH to many hosts, all or nothing.\n\n\
Each host gets releases/<UTC timestamp>/, a `current` symlink switched atomically, shared/ for \
what outlives releases, revisions.log (Capistrano's lines) and .deploy/ (lock, log, manifests, \
bad marks), so Capistrano and the deployer can follow each other on a host. \
A deploy is staged on every host before any host publishes; a failure before publish removes \
the staged release everywhere, a failure after publish (hooks, health gate) puts every host \
back on its previous release.",
    after_help = "CONFIG (default ./deploy.toml; example: packaging/deploy.toml; paths relative to the file):\n  \
application, deploy_to, keep_releases (5), source (the directory that becomes a release),\n  \
build (run locally first), exclude (gitignore patterns that never travel; nor does .git),\n  \
shared_dirs (made when missing), shared_files (must exist in shared/ on every host, or\n    \
{ path = \"…\", seed = true } to copy the release's file there the first time),\n  \
[ssh] user, port, identity (else the SSH agent), known_hosts (~/.ssh/known_hosts),\n    \
proxy_jump = \"[user@]bastion[:port],…\" (jump hosts, as OpenSSH's ProxyJump),\n    \
ssh_config = \"~/.ssh/config\" (read HostName, User, Port, IdentityFile, ProxyJump; opt-in),\n  \
[[hosts]] address = \"host[:port]\", roles, deploy_to, proxy_jump (\"none\": direct),\n    \
riemann_host (the name its events carry in Riemann; the canary trusts only the deploy's hosts),\n  \
[hooks] before_publish, after_publish (run in the release directory, with $RELEASE,\n    \
$RELEASE_PATH, $PREVIOUS_RELEASE, $DEPLOY_TO, $REVISION set; { command = \"…\", roles =\n    \
[\"db\"], once = true } runs on the hosts with one of roles, once: the first of them;\n    \
{ task = \"NAME\" } runs [tasks.NAME]), local_before, local_after, local_failed (run here, with\n    \
$DEPLOY_RELEASE, $DEPLOY_REVISION, $DEPLOY_HOSTS, $DEPLOY_OUTCOME = ok|failed),\n  \
[tasks.NAME] command, roles, once, description: run by hand with `deployer run NAME`, or\n    \
as a hook,\n  \
[health] url (\"{host}\" is replaced) + method (ping), and/or command (a Nagios plugin,\n    \
exit 0 = healthy), retries (10), interval (1s), timeout (10s),\n  \
[riemann] server = \"host:5555\" (deploy events; what --canary queries),\n  \
[canary] max_error_ratio (2), max_latency_ratio (1.5), min_error_rate (0.1/s), min_latency\n    \
(5ms), interval (5s).\n\n\
STAGES (as Capistrano's config/deploy/<stage>.rb): deploy.toml holds what they share;\n  \
deploy/<stage>.toml beside it, or a [stages.<stage>] table in it, overrides it for\n  \
`deployer -s <stage> …` (tables merge key by key; any other value, [[hosts]] too, is replaced).\n\
Unknown keys are errors. Host keys are checked strictly against known_hosts.\n\n\
EXAMPLES:\n  deployer check\n  deployer -s staging deploy\n  deployer deploy --dry-run\n  deployer deploy --ref v1.4.2\n  deployer deploy --rolling 2\n  deployer deploy --rolling 1 --canary 60s\n  \
deployer releases --hosts app1.example.com\n  deployer rollback --to 20261123101500\n  \
deployer exec --role app -- systemctl status usersvc\n  deployer -s production run migrate\n  deployer logs -n 20 -f\n  \
deployer unlock",
    // In each subcommand's help, its own options come first and these under their own heading.
    next_help_heading = "Global options"
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
    /// The stage: deploy/STAGE.toml (beside the config) or its [stages.STAGE] table, laid over
    /// the config (tables key by key, anything else replaced, [[hosts]] whole)
    #[arg(short = 's', long, global = true, value_name = "STAGE")]
    stage: Option<String>,
    /// Only these hosts (as written in the config, or their host names), comma-separated
    #[arg(long, value_delimiter = ',', global = true)]
    hosts: Vec<String>,
    /// Only hosts with this role
    #[arg(long, global = true)]
    role: Option<String>,
    /// Hosts worked on at the same time
    #[arg(long, default_value_t = Settings::PARALLEL, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    parallel: u16,
    /// Add unknown host keys to known_hosts instead of refusing them (changed keys are still
    /// refused)
    #[arg(long, global = true)]
    accept_new_host_keys: bool,
    /// Connect timeout and limit for each remote step (e.g. 30s, 2m; a bare number is seconds)
    #[arg(long, default_value = "10s", global = true, value_name = "DURATION", value_parser = toolkit_core::duration::positive)]
    timeout: Duration,
    /// Limit for each hook (e.g. 10m; a bare number is seconds): past it the hook is killed on its
    /// host (with what it
    /// started) and the deploy fails
    #[arg(long, default_value = "10m", global = true, value_name = "DURATION", value_parser = toolkit_core::duration::positive)]
    hook_timeout: Duration,
    /// No stage lines, spinners or progress bars on stderr (errors and the summary only)
    #[arg(short, long, global = true)]
    quiet: bool,
    /// The build's output as it runs; after the summary, every hook's output (remote and
    /// local), not only a failed one's
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Put a new release on every selected host and publish it everywhere, or nowhere
    Deploy {
        /// Print the plan (reads the hosts, changes nothing); with -v, every remote command
        /// each host would be sent, in order
        #[arg(long)]
        dry_run: bool,
        /// Publish N hosts at a time, with the health gate between batches
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
        rolling: Option<u16>,
        /// The revision written to REVISION [default: the commit deployed (full SHA), else a
        /// content hash]
        #[arg(long)]
        revision: Option<String>,
        /// Deploy this commit's version of the source directory (a branch, tag or commit of the
        /// git repository it is in), read with `git archive` (export-ignore honoured); the
        /// build command is not run
        #[arg(long = "ref", value_name = "REF")]
        git_ref: Option<String>,
        /// Deploy a source whose git work tree has uncommitted changes; its revision ends in
        /// -dirty [default: refused, naming the files]
        #[arg(long)]
        allow_dirty: bool,
        /// Wait up to this long for another deploy's lock (e.g. 5m), showing who holds it,
        /// instead of failing at once: for CI pipelines that may deploy at the same time
        #[arg(long, value_name = "DURATION", value_parser = toolkit_core::duration::parse)]
        lock_wait: Option<std::time::Duration>,
        /// Publish the first batch (--rolling N hosts, or one) and watch it this long (e.g. 60s)
        /// before the rest: the health gate every [canary] interval and, with [riemann],
        /// usersvc's errors rate and latency p99 on the new revision against the hosts still on
        /// the old one. Worse beyond [canary] max_error_ratio/max_latency_ratio: every published
        /// host goes back and the deploy fails
        #[arg(long, value_name = "DURATION", value_parser = toolkit_core::duration::positive)]
        canary: Option<std::time::Duration>,
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
    /// Check every host: SSH and host key, deploy_to exists and is writable, lock free, the
    /// shared files there
    Check,
    /// The last lines of the service's log (`log`, default shared/usersvc.log) on every
    /// selected host, prefixed by host; -f follows them until Ctrl-C
    Logs {
        /// How many lines from each host
        #[arg(short = 'n', long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        lines: u32,
        /// Then print new lines as they are written, from every host at once, until Ctrl-C
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command on every selected host, in parallel, in its current release; output
    /// prefixed by host. Fails when it fails on any host, naming them
    Exec {
        /// Print each host's output under a heading instead of prefixing each line
        #[arg(long)]
        group: bool,
        /// The command, after --: one argument is a shell command line (`'ls bin; cat REVISION'`,
        /// as ssh takes it), several are its words, run as they are; within --hook-timeout
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The deploys and rollbacks of this application made from this machine, newest last:
    /// when, who, the stage, the release and revision, the outcome, the hosts (kept in
    /// $XDG_STATE_HOME/deployer/history, default ~/.local/state/deployer/history)
    History {
        /// How many, at most
        #[arg(short = 'n', long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        lines: u32,
    },
    /// List the tasks of [tasks]: where each runs, its command and description
    Tasks,
    /// Run the task NAME of [tasks] on the selected hosts it names (its roles; with once, the
    /// first of them), in each host's current release, with the hooks' environment; output
    /// prefixed by host. Fails when it fails on any host, naming them
    Run {
        /// The task, as deploy.toml names it ([tasks.NAME])
        name: String,
        /// Print each host's output under a heading instead of prefixing each line
        #[arg(long)]
        group: bool,
        /// Run without taking the deploy lock (for a task that only reads): by default each
        /// host is locked while the task runs, and a host a deploy holds is not run on
        #[arg(long)]
        no_lock: bool,
    },
    /// Print the settings a command would use, resolved: the stage laid over deploy.toml,
    /// defaults filled in, each selected host's reach, each with where it came from (secrets
    /// masked). Reads no host
    Config,
    /// Remove a stale lock left by a deploy of yours that died; --force removes anyone's
    Unlock {
        /// Remove the lock whoever holds it
        #[arg(long)]
        force: bool,
    },
    /// Print the completion script for SHELL, e.g.
    /// `deployer completions bash > ~/.local/share/bash-completion/completions/deployer`
    /// (`make install` installs them for bash, zsh and fish)
    Completions { shell: cli_docs::Shell },
    /// Write the man pages into DIR (`make install` does)
    #[command(hide = true)]
    ManPages { dir: PathBuf },
}

/// `completions` and `man-pages` describe the tool: they need no config.
fn describe(command: &Command) -> Option<anyhow::Result<()>> {
    use clap::CommandFactory;
    match command {
        Command::Completions { shell } => Some(
            cli_docs::completions(Cli::command(), *shell).context("cannot print the completions"),
        ),
        Command::ManPages { dir } => Some(
            cli_docs::man_pages(Cli::command(), dir)
                .map(|_| ())
                .with_context(|| format!("cannot write the man pages into {}", dir.display())),
        ),
        _ => None,
    }
}

fn main() -> std::process::ExitCode {
    cli_message::exit("deployer", run())
}

/// Prints what the command did; its verdict becomes the exit status.
fn report(outcome: impl Outcome) -> anyhow::Result<()> {
    // A closed stdout (`| head`) is not a failure of the command.
    let _ = writeln!(std::io::stdout(), "{outcome}");
    Ok(outcome.verdict()?)
}

/// First Ctrl-C/SIGTERM: finish the current step, then take the failure path (staged releases
/// removed or hosts rolled back, locks released). A second one exits at once.
fn stop_on_signals(settings: &Settings) -> anyhow::Result<()> {
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, settings.interrupted.clone())
            .and_then(|_| signal_hook::flag::register(sig, settings.interrupted.clone()))
            .context("installing the signal handler")?;
    }
    Ok(())
}

/// `deploy`, or with `--dry-run` its plan. A deploy, however it ends, is a line of the
/// history.
fn deploy(
    cfg: &Config,
    targets: &[deployer::Target],
    settings: &Settings,
    options: &Options,
    dry_run: bool,
) -> anyhow::Result<()> {
    if dry_run {
        return report(deployer::plan(cfg, targets, settings, options)?);
    }
    let stage = cfg.stage.as_deref();
    match deployer::deploy(cfg, targets, settings, options) {
        Ok(done) => {
            remember(&HistoryEntry::of_deploy(&cfg.application, stage, &done));
            report(done)
        }
        Err(e) => {
            let mut entry = HistoryEntry::of_deploy(&cfg.application, stage, &Default::default());
            entry.hosts = targets.iter().map(|t| t.name.clone()).collect();
            remember(&entry);
            Err(e.into())
        }
    }
}

/// Appends to this machine's deploy history; one that cannot be written is a warning.
fn remember(entry: &HistoryEntry) {
    if let Err(e) = deployer::record_history(entry) {
        eprintln!("deployer: warning: {e}");
    }
}

/// What every command shares, from the command line and the config.
fn settings(cli: &Cli, cfg: &Config) -> Settings {
    let policy = if cli.accept_new_host_keys {
        HostKeyPolicy::AcceptNew
    } else {
        HostKeyPolicy::Strict
    };
    let mut settings = Settings::new(cfg.ssh_settings(policy, cli.timeout));
    settings.parallel = usize::from(cli.parallel);
    settings.hook_timeout = cli.hook_timeout;
    settings.quiet = cli.quiet;
    settings.verbose = cli.verbose;
    settings
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(done) = describe(&cli.command) {
        return done;
    }
    let cfg = Config::load_stage(&cli.config, cli.stage.as_deref())
        .context("fix the deploy configuration")?;
    let targets = cfg.targets(&cli.hosts, cli.role.as_deref())?;
    let settings = settings(&cli, &cfg);
    stop_on_signals(&settings)?;
    deployer::raise_open_files_limit();
    dispatch(cli.command, &cfg, &targets, &settings)
}

/// Runs `command` on the selected hosts.
fn dispatch(
    command: Command,
    cfg: &Config,
    targets: &[deployer::Target],
    settings: &Settings,
) -> anyhow::Result<()> {
    match command {
        Command::Deploy {
            dry_run,
            rolling,
            revision,
            git_ref,
            allow_dirty,
            lock_wait,
            canary,
        } => {
            let options = Options {
                rolling: rolling.map(usize::from),
                revision,
                git_ref,
                allow_dirty,
                lock_wait,
                canary,
            };
            deploy(cfg, targets, settings, &options, dry_run)
        }
        Command::Rollback { to, dry_run } => rollback(cfg, targets, settings, to, dry_run),
        Command::History { lines } => report(deployer::read_history(
            &deployer::history_path()?,
            &cfg.application,
            cfg.stage.as_deref(),
            lines as usize,
        )?),
        Command::Releases => report(deployer::list(targets, settings)),
        Command::Cleanup { dry_run } => report(deployer::cleanup(cfg, targets, settings, dry_run)),
        Command::Check => report(deployer::check(cfg, targets, settings)),
        Command::Config => report(deployer::show_config(cfg, targets)),
        Command::Tasks => report(deployer::list_tasks(cfg)),
        Command::Run {
            name,
            group,
            no_lock,
        } => report(deployer::run_task(
            cfg, targets, settings, &name, group, no_lock,
        )?),
        Command::Logs { lines, follow } if follow => {
            report(deployer::follow(targets, settings, &cfg.log, lines))
        }
        Command::Logs { lines, .. } => report(deployer::logs(targets, settings, &cfg.log, lines)),
        Command::Exec { group, command } => {
            report(deployer::exec(targets, settings, &command, group))
        }
        Command::Unlock { force } => {
            report(deployer::unlock(targets, settings, &cfg.user(), force))
        }
        Command::Completions { .. } | Command::ManPages { .. } => Ok(()),
    }
}

/// `rollback`; unless a dry run, a line of the history.
fn rollback(
    cfg: &Config,
    targets: &[deployer::Target],
    settings: &Settings,
    to: Option<String>,
    dry_run: bool,
) -> anyhow::Result<()> {
    let done = deployer::rollback(cfg, targets, settings, to.as_deref(), dry_run);
    if !dry_run {
        remember(&HistoryEntry::of_rollback(
            &cfg.application,
            cfg.stage.as_deref(),
            done.hosts.iter().map(|m| m.name.clone()).collect(),
            done.hosts.iter().filter_map(|m| m.to.clone()).collect(),
            done.verdict().is_ok(),
        ));
    }
    report(done)
}
