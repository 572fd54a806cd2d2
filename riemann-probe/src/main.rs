use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use riemann_probe::{
    Client, ClientConfig, Collector, HealthLimits, Thresholds, TlsFiles, Transport, WatchConfig,
    event, event_json, nagios_events,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "riemann-probe",
    version,
    about = "Send events to Riemann, query its index, or forward a Nagios plugin's result",
    after_help = "Examples:
  riemann-probe send --service 'usersvc heartbeat' --state ok --ttl 30
  riemann-probe --udp send --service 'disk /' --metric 0.82 --tag disk
  riemann-probe query 'service = \"usersvc heartbeat\"'
  riemann-probe nagios --service usersvc -- check_jsonrpc -H app1 -p 8080
  riemann-probe watch --interval 10s --health
  riemann-probe watch --interval 1m --nagios -- check_jsonrpc -H app1 -p 8080
  riemann-probe --tls --tls-ca ca.pem --tls-cert me.pem --tls-key me.key send --service x"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Cmd,
}

/// Shown in each subcommand's help after its own options, under a heading of their own.
#[derive(Args)]
#[command(next_help_heading = "Riemann connection (every command)")]
struct Conn {
    /// Riemann server HOST:PORT [default: $RIEMANN_SERVER, else 127.0.0.1:5555 (5554 with --tls)]
    #[arg(long, env = "RIEMANN_SERVER", global = true)]
    server: Option<String>,
    /// Send over UDP (no acknowledgement, 16 KiB per message)
    #[arg(long, global = true, conflicts_with = "tls")]
    udp: bool,
    /// Use TLS with a client certificate (Riemann's TLS listener requires one)
    #[arg(long, global = true, requires_all = ["tls_ca", "tls_cert", "tls_key"])]
    tls: bool,
    /// CA certificate (PEM) that signed the server's certificate
    #[arg(long, global = true, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// Client certificate (PEM)
    #[arg(long, global = true, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM)
    #[arg(long, global = true, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Name to verify in the server's certificate [default: the server's host]
    #[arg(long, global = true, value_name = "NAME")]
    tls_server_name: Option<String>,
    /// The most a command may spend talking to Riemann in all (connect, send, answer), e.g. 500ms,
    /// 5s
    #[arg(long, global = true, default_value = "5s", value_parser = toolkit_core::duration::parse)]
    timeout: Duration,
}

#[derive(Subcommand)]
enum Cmd {
    /// Send one event
    Send(SendArgs),
    /// Query the index; prints matching events as JSON lines
    Query {
        /// A Riemann query, e.g. 'service = "x" and host = "h"' or 'true'
        query: String,
    },
    /// Run a Nagios plugin and send its state, first output line and perfdata as events
    Nagios {
        /// Service name of the check's event [default: the plugin's file name]
        #[arg(long)]
        service: Option<String>,
        /// Host of the events [default: this machine]
        #[arg(long)]
        host: Option<String>,
        /// How long the events stay valid in Riemann (e.g. 90s, 5m; a bare number is seconds)
        #[arg(long, value_name = "DURATION", value_parser = ttl)]
        ttl: Option<f32>,
        /// Kill a plugin still running after this long and report it critical, "plugin timed
        /// out after …" (Nagios's service_check_timeout)
        #[arg(long, value_name = "DURATION", value_parser = toolkit_core::duration::parse, default_value = "60s")]
        plugin_timeout: std::time::Duration,
        /// The plugin and its arguments, after --
        #[arg(last = true, required = true)]
        plugin: Vec<String>,
    },
    /// Send events every interval until stopped: the host's health, a plugin's or a command's
    #[command(after_help = WATCH_HELP)]
    Watch(WatchArgs),
    /// Print the completion script for SHELL, e.g.
    /// `riemann-probe completions bash > ~/.local/share/bash-completion/completions/riemann-probe`
    /// (`make install` installs them for bash, zsh and fish)
    Completions { shell: cli_docs::Shell },
    /// Write the man pages into DIR (`make install` does)
    #[command(hide = true)]
    ManPages { dir: PathBuf },
}

const WATCH_HELP: &str = "\
Runs until SIGTERM or SIGINT, then sends what is queued (within --timeout) and exits 0. Every
event carries a ttl (default: three intervals), so Riemann expires them, and alerts, when the
watcher dies. Riemann being down or slow never delays sampling: events wait in a bounded queue.

--health sends, as riemann-health does: cpu (busy fraction over the interval), memory (used
fraction: 1 - MemAvailable/MemTotal), load (1-minute load average per core) and \"disk MOUNT\"
(used fraction of each real filesystem), each with a state from its thresholds.

Examples:
  riemann-probe watch --interval 10s --health
  riemann-probe watch --interval 1m --nagios -- /usr/lib/nagios/plugins/check_disk -w 10% -c 5%
  riemann-probe watch --interval 30s --command --service backup -- test -e /srv/backup/done";

#[derive(Args)]
struct WatchArgs {
    /// How often to sample and send, e.g. 10s, 1m
    #[arg(long, default_value = "10s", value_parser = toolkit_core::duration::parse)]
    interval: Duration,
    /// How long the events stay valid in Riemann (e.g. 90s; a bare number is seconds) [default:
    /// three intervals]
    #[arg(long, value_name = "DURATION", value_parser = ttl)]
    ttl: Option<f32>,
    /// Host of the events [default: this machine]
    #[arg(long)]
    host: Option<String>,
    /// Send cpu, memory, load and disk usage, as riemann-health
    #[arg(long)]
    health: bool,
    /// cpu busy fraction that is a warning
    #[arg(long, value_name = "FRACTION", default_value_t = 0.9)]
    cpu_warning: f64,
    /// cpu busy fraction that is critical
    #[arg(long, value_name = "FRACTION", default_value_t = 0.95)]
    cpu_critical: f64,
    /// Memory used fraction that is a warning
    #[arg(long, value_name = "FRACTION", default_value_t = 0.85)]
    memory_warning: f64,
    /// Memory used fraction that is critical
    #[arg(long, value_name = "FRACTION", default_value_t = 0.95)]
    memory_critical: f64,
    /// Load average per core that is a warning
    #[arg(long, value_name = "LOAD", default_value_t = 3.0)]
    load_warning: f64,
    /// Load average per core that is critical
    #[arg(long, value_name = "LOAD", default_value_t = 8.0)]
    load_critical: f64,
    /// Disk used fraction that is a warning
    #[arg(long, value_name = "FRACTION", default_value_t = 0.9)]
    disk_warning: f64,
    /// Disk used fraction that is critical
    #[arg(long, value_name = "FRACTION", default_value_t = 0.95)]
    disk_critical: f64,
    /// Run the Nagios plugin given after -- every interval; send its state and perfdata
    #[arg(long, conflicts_with = "command")]
    nagios: bool,
    /// Run the command given after -- every interval: ok when it exits 0, else critical
    #[arg(long)]
    command: bool,
    /// Service of the plugin's or command's event [default: its file name]
    #[arg(long)]
    service: Option<String>,
    /// Kill a plugin or command still running after this long, reported critical [default: the
    /// interval]
    #[arg(long, value_name = "DURATION", value_parser = toolkit_core::duration::parse)]
    command_timeout: Option<Duration>,
    /// The plugin or command and its arguments, after --
    #[arg(last = true)]
    program: Vec<String>,
}

impl WatchArgs {
    fn into_config(self, client: ClientConfig) -> anyhow::Result<WatchConfig> {
        self.check_timing()?;
        // Checked with or without --health: thresholds given are thresholds meant.
        let limits = self.limits()?;
        let mut collectors = Vec::new();
        if self.health {
            collectors.push(Collector::Health(limits));
        }
        let (interval, ttl, host) = (self.interval, self.ttl, self.host.clone());
        let command_timeout = self.command_timeout.unwrap_or(interval);
        collectors.extend(self.program_collector()?);
        anyhow::ensure!(
            !collectors.is_empty(),
            "nothing to watch: give --health, --nagios -- PLUGIN… or --command -- CMD…"
        );
        Ok(WatchConfig {
            say: |line| {
                eprintln!(
                    "riemann-probe: {}",
                    toolkit_core::terminal::clipped(line, 2000)
                )
            },
            client,
            interval,
            ttl,
            host,
            command_timeout,
            collectors,
        })
    }

    /// `--interval` between 100 ms and a day; `--ttl` above 0.
    fn check_timing(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.interval >= Duration::from_millis(100),
            "--interval {} is too short: at least 100ms",
            humantime::format_duration(self.interval)
        );
        anyhow::ensure!(
            self.interval <= Duration::from_secs(86_400),
            "--interval {} is too long: at most 1 day",
            humantime::format_duration(self.interval)
        );
        anyhow::ensure!(
            self.ttl.is_none_or(|t| t.is_finite() && t > 0.0),
            "--ttl must be seconds above 0"
        );
        Ok(())
    }

    /// `--health`'s thresholds, each warning at most its critical.
    fn limits(&self) -> anyhow::Result<HealthLimits> {
        let pair = |name: &str, warning: f64, critical: f64| {
            anyhow::ensure!(
                warning.is_finite() && critical.is_finite() && warning <= critical,
                "--{name}-warning {warning} must not exceed --{name}-critical {critical}"
            );
            Ok(Thresholds { warning, critical })
        };
        Ok(HealthLimits {
            cpu: pair("cpu", self.cpu_warning, self.cpu_critical)?,
            memory: pair("memory", self.memory_warning, self.memory_critical)?,
            load: pair("load", self.load_warning, self.load_critical)?,
            disk: pair("disk", self.disk_warning, self.disk_critical)?,
        })
    }

    /// `--nagios` or `--command` with the program after `--`: both or neither.
    fn program_collector(self) -> anyhow::Result<Option<Collector>> {
        let runs_program = self.nagios || self.command;
        anyhow::ensure!(
            runs_program != self.program.is_empty(),
            "{}",
            if runs_program {
                "--nagios and --command need the program after --, e.g. -- check_disk -w 10%"
            } else {
                "a program after -- needs --nagios or --command to say how to read it"
            }
        );
        if !runs_program {
            return Ok(None);
        }
        let service = self
            .service
            .unwrap_or_else(|| program_name(&self.program[0]));
        let argv = self.program;
        Ok(Some(if self.nagios {
            Collector::Nagios { argv, service }
        } else {
            Collector::Command { argv, service }
        }))
    }
}

#[derive(Args)]
struct SendArgs {
    #[arg(long)]
    service: String,
    /// [default: this machine's hostname]
    #[arg(long)]
    host: Option<String>,
    #[arg(long)]
    state: Option<String>,
    /// An integer is sent as metric_sint64, anything else as metric_d
    #[arg(long, allow_hyphen_values = true)]
    metric: Option<String>,
    /// How long the event stays valid (e.g. 90s, 5m; a bare number is seconds)
    #[arg(long, value_name = "DURATION", value_parser = ttl)]
    ttl: Option<f32>,
    #[arg(long)]
    tag: Vec<String>,
    /// KEY=VALUE (repeatable)
    #[arg(long)]
    attribute: Vec<String>,
    #[arg(long)]
    description: Option<String>,
}

fn client_config(c: &Conn) -> anyhow::Result<ClientConfig> {
    let transport = if c.udp {
        Transport::Udp
    } else if c.tls {
        Transport::Tls(TlsFiles {
            ca: c.tls_ca.clone().context("--tls needs --tls-ca")?,
            cert: c.tls_cert.clone().context("--tls needs --tls-cert")?,
            key: c.tls_key.clone().context("--tls needs --tls-key")?,
            server_name: c.tls_server_name.clone(),
        })
    } else {
        Transport::Tcp
    };
    let default = if c.tls {
        "127.0.0.1:5554"
    } else {
        "127.0.0.1:5555"
    };
    Ok(ClientConfig {
        addr: c.server.clone().unwrap_or_else(|| default.into()),
        transport,
        timeout: c.timeout,
    })
}

/// A ttl as every duration flag takes it, in the seconds Riemann's events carry.
fn ttl(text: &str) -> Result<f32, String> {
    toolkit_core::duration::positive(text).map(|d| d.as_secs_f32())
}

fn main() -> std::process::ExitCode {
    cli_message::exit("riemann-probe", run())
}

/// `completions` and `man-pages` describe the tool: no server, no connection.
fn describe(command: &Cmd) -> Option<anyhow::Result<()>> {
    use clap::CommandFactory;
    match command {
        Cmd::Completions { shell } => Some(
            cli_docs::completions(Cli::command(), *shell).context("cannot print the completions"),
        ),
        Cmd::ManPages { dir } => Some(
            cli_docs::man_pages(Cli::command(), dir)
                .map(|_| ())
                .with_context(|| format!("cannot write the man pages into {}", dir.display())),
        ),
        _ => None,
    }
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(done) = describe(&cli.command) {
        return done;
    }
    let cfg = client_config(&cli.conn)?;
    // --timeout bounds each command in all (connect, send, answer), from when it talks to Riemann.
    let connect = || {
        Client::connect_until(&cfg, Some(std::time::Instant::now() + cfg.timeout))
            .with_context(|| format!("is Riemann listening on {}?", cfg.addr))
    };
    match cli.command {
        Cmd::Send(a) => {
            // The flags first: a bad --metric is reported as such, not as an unreachable Riemann.
            let event = event_of(a)?;
            let dropped = connect()?
                .send(&[event])
                .context("the event was not accepted")?;
            anyhow::ensure!(
                dropped == 0,
                "the event is over UDP's 16 KiB limit and was not sent: use TCP"
            );
        }
        Cmd::Query { query } => {
            for e in connect()?.query(&query).context("the query failed")? {
                // The server's strings: JSON escapes what a terminal would obey.
                println!(
                    "{}",
                    toolkit_core::terminal::json(&event_json(&e).to_string())
                );
            }
        }
        Cmd::Watch(args) => watch(args.into_config(cfg)?)?,
        Cmd::Nagios {
            service,
            host,
            ttl,
            plugin_timeout,
            plugin,
        } => {
            let run = plugin_api::run_argv(&plugin, plugin_timeout)?;
            let service = service.unwrap_or_else(|| program_name(&plugin[0]));
            let events = nagios_events(&run, &service, host.as_deref(), ttl);
            forward(connect()?, &events)?;
            if run.timed_out {
                println!("{}", run.first_line);
            } else {
                print!("{}", run.output);
            }
        }
        Cmd::Completions { .. } | Cmd::ManPages { .. } => {}
    }
    Ok(())
}

/// Sends a plugin's events; over UDP, says how many were too large to go.
fn forward(mut client: Client, events: &[riemann_probe::Event]) -> anyhow::Result<()> {
    let dropped = client
        .send(events)
        .context("the plugin's events were not accepted")?;
    if dropped > 0 {
        eprintln!(
            "riemann-probe: {dropped} of {} events were over UDP's 16 KiB limit and not sent; the others were",
            events.len()
        );
    }
    Ok(())
}

/// A program's event service by default: its file name.
fn program_name(argv0: &str) -> String {
    std::path::Path::new(argv0)
        .file_name()
        .map_or_else(|| argv0.to_owned(), |n| n.to_string_lossy().into_owned())
}

/// `send`'s flags as one event.
fn event_of(a: SendArgs) -> anyhow::Result<riemann_probe::Event> {
    let mut b = event(a.service);
    if let Some(h) = a.host {
        b = b.host(h);
    }
    if let Some(s) = a.state {
        b = b.state(s);
    }
    if let Some(m) = a.metric {
        b = match m.parse::<i64>() {
            Ok(i) => b.metric(i),
            Err(_) => b.metric(
                m.parse::<f64>()
                    .with_context(|| format!("--metric {m:?} is not a number"))?,
            ),
        };
    }
    if let Some(t) = a.ttl {
        b = b.ttl(t);
    }
    for t in a.tag {
        b = b.tag(t);
    }
    for kv in a.attribute {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--attribute {kv:?}: write KEY=VALUE"))?;
        b = b.attribute(k, v);
    }
    if let Some(d) = a.description {
        b = b.description(d);
    }
    Ok(b.build())
}

/// `watch`: until SIGTERM or SIGINT; what was not delivered is said at exit.
fn watch(cfg: WatchConfig) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .context("cannot handle SIGTERM/SIGINT")?;
    }
    let stats = riemann_probe::watch(cfg, &stop);
    if stats.dropped > 0 || stats.queued > 0 {
        eprintln!(
            "riemann-probe: {} events sent; {} dropped and {} undelivered at exit (was Riemann reachable?)",
            stats.sent, stats.dropped, stats.queued
        );
    }
    Ok(())
}
