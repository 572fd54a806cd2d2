use service::LogFormat;
use service::{Command, Inherited, Invocation};
use std::process::ExitCode;

fn main() -> ExitCode {
    service::keep_files_private();
    // First, while this is the only thread: it takes LISTEN_FDS out of the environment.
    let mut inherited = Inherited::from_env();
    let invocation = Invocation::parse();
    match run(invocation, &mut inherited) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One message (ours carry their cause), no "Caused by:" chain, no backtrace, no
            // password from a URL it quotes.
            let message = toolkit_core::redact::text(&e.to_string());
            eprintln!("usersvc: {message}");
            if let Ok(inherited) = &mut inherited {
                // An upgrade or `upgrade --start` waiting for us reports this as the reason.
                inherited.failed(&message);
            }
            ExitCode::FAILURE
        }
    }
}

/// `completions` and `man-pages` describe the tool: no settings, no store.
fn describe(command: &Command) -> Option<anyhow::Result<()>> {
    match command {
        Command::Completions { shell } => Some(
            cli_docs::completions(Invocation::command(), *shell)
                .map_err(|e| anyhow::anyhow!("cannot print the completions: {e}")),
        ),
        Command::ManPages { dir } => Some(
            cli_docs::man_pages(Invocation::command(), dir)
                .map(|_| ())
                .map_err(|e| {
                    anyhow::anyhow!("cannot write the man pages into {}: {e}", dir.display())
                }),
        ),
        _ => None,
    }
}

fn run(
    invocation: Invocation,
    inherited: &mut Result<Inherited, service::ListenError>,
) -> anyhow::Result<()> {
    if let Some(done) = describe(&invocation.command) {
        return done;
    }
    let settings = invocation.settings()?;
    // Held to the end: dropping it writes out the lines still buffered.
    let _log = init_logging(settings.log.log_format, &settings.log.log)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = settings.server.workers {
        runtime.worker_threads(n.into());
    }
    let runtime = runtime.enable_all().build()?;
    match invocation.command {
        Command::Serve => {
            let inherited = inherited.as_mut().map_err(|e| anyhow::anyhow!("{e}"))?;
            let served = runtime.block_on(service::serve(settings, inherited));
            // A blocking call stuck on a stalled peer (a Riemann flush) must not keep the
            // process alive: the runtime waits for it this long, no more.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            Ok(served?)
        }
        Command::Import { file } => {
            let n = runtime
                .block_on(service::import(&settings, &file))
                .map_err(|e| {
                    anyhow::anyhow!("nothing was imported from {}: {e}", file.display())
                })?;
            println!("imported {n} users from {}", file.display());
            Ok(())
        }
        Command::Journal { action } => {
            let action = action.unwrap_or(service::JournalAction::List);
            let out = service::run_journal_command(&settings.store.journal, &action)?;
            println!("{out}");
            Ok(())
        }
        Command::Completions { .. } | Command::ManPages { .. } => Ok(()),
        Command::Upgrade { start, timeout } => {
            let done = runtime.block_on(service::upgrade(
                settings.server.pid_file.as_deref(),
                start,
                timeout,
            ))?;
            println!("{done}");
            Ok(())
        }
    }
}

fn init_logging(
    format: LogFormat,
    filter: &str,
) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    // sqlx logs on its own what usersvc already says once, better (a dropped connection as
    // "ping on idle connection returned error", each PostgreSQL notice): its lines below error
    // stay out unless the filter names sqlx (`--log info,sqlx=info`).
    let filter = if filter.contains("sqlx") || filter.trim() == "off" {
        filter.to_owned()
    } else {
        format!("{filter},sqlx=error")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).map_err(|e| {
        anyhow::anyhow!("bad log filter {filter:?} (try info or usersvc::access=debug): {e}")
    })?;
    use std::io::IsTerminal;
    // A thread writes the lines, so a slow pipe or journald never holds a request (the access
    // log writes one per failed call); when it falls far behind, lines are dropped, not waited on.
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    // Colour only for a person at a terminal: a log file or a pipe gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(guard)
}
