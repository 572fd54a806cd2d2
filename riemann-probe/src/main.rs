use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use riemann_probe::{Client, ClientConfig, TlsFiles, Transport, event, event_json, nagios_events};
use std::path::PathBuf;
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
  riemann-probe --tls --tls-ca ca.pem --tls-cert me.pem --tls-key me.key send --service x"
)]
struct Cli {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Args)]
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
    /// The most a command may spend talking to Riemann in all (connect, send, answer), e.g. 500ms, 5s
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
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
        /// Seconds the events stay valid in Riemann
        #[arg(long)]
        ttl: Option<f32>,
        /// Kill a plugin still running after this long and report it critical, "plugin timed
        /// out after …" (Nagios's service_check_timeout)
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "60s")]
        plugin_timeout: std::time::Duration,
        /// The plugin and its arguments, after --
        #[arg(last = true, required = true)]
        plugin: Vec<String>,
    },
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
    /// Seconds the event stays valid
    #[arg(long)]
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

fn main() -> std::process::ExitCode {
    cli_message::exit("riemann-probe", run())
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let cfg = client_config(&cli.conn)?;
    // --timeout bounds each command in all (connect, send, answer), from when it talks to Riemann.
    let connect = || {
        Client::connect_until(&cfg, Some(std::time::Instant::now() + cfg.timeout))
            .with_context(|| format!("is Riemann listening on {}?", cfg.addr))
    };
    match cli.command {
        Cmd::Send(a) => {
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
            let dropped = connect()?
                .send(&[b.build()])
                .context("the event was not accepted")?;
            anyhow::ensure!(
                dropped == 0,
                "the event is over UDP's 16 KiB limit and was not sent: use TCP"
            );
        }
        Cmd::Query { query } => {
            for e in connect()?.query(&query).context("the query failed")? {
                println!("{}", event_json(&e));
            }
        }
        Cmd::Nagios {
            service,
            host,
            ttl,
            plugin_timeout,
            plugin,
        } => {
            let run = plugin_api::run_argv(&plugin, plugin_timeout)?;
            let service = service.unwrap_or_else(|| {
                std::path::Path::new(&plugin[0])
                    .file_name()
                    .map_or_else(|| plugin[0].clone(), |n| n.to_string_lossy().into_owned())
            });
            let events = nagios_events(&run, &service, host.as_deref(), ttl);
            let dropped = connect()?
                .send(&events)
                .context("the plugin's events were not accepted")?;
            if dropped > 0 {
                eprintln!(
                    "riemann-probe: {dropped} of {} events were over UDP's 16 KiB limit and not sent; the others were",
                    events.len()
                );
            }
            if run.timed_out {
                println!("{}", run.first_line);
            } else {
                print!("{}", run.output);
            }
        }
    }
    Ok(())
}
