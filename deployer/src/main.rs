use anyhow::Context;
use clap::{Parser, Subcommand};
use deployer::config::Config;
use deployer::ssh::{HostKeyPolicy, SshSettings};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "deployer",
    version,
    about = "Capistrano-style releases over SSH to many hosts, all or nothing",
    after_help = "The config (default ./deploy.toml; see packaging/deploy.toml) names the application, \
deploy_to, source, shared files and dirs, [ssh] settings, [[hosts]] with roles, [hooks], [health] \
and [riemann]. Unknown keys are errors. Host keys are checked strictly against known_hosts."
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
    #[arg(long, default_value_t = 16, global = true)]
    parallel: usize,
    /// Add unknown host keys to known_hosts instead of refusing them (changed keys are still refused)
    #[arg(long, global = true)]
    accept_new_host_keys: bool,
    /// Connect and command timeout in seconds
    #[arg(long, default_value_t = 10, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every host: SSH and host key, deploy_to exists and is writable, lock free
    Check,
}

fn main() -> anyhow::Result<()> {
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
        timeout: Duration::from_secs(cli.timeout.max(1)),
    };
    match cli.command {
        Command::Check => {
            let reports = deployer::check::check_all(&targets, &ssh, cli.parallel);
            println!("{}", deployer::check::render(&reports));
            let bad = reports.iter().filter(|r| r.problem.is_some()).count();
            if bad > 0 {
                anyhow::bail!("{bad} of {} hosts are not ready to deploy", reports.len());
            }
        }
    }
    Ok(())
}
