use anyhow::Context;
use clap::Parser;
use service::config::LogFormat;
use service::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let settings = cli
        .options
        .resolve()
        .context("fix the configuration and start again")?;
    init_logging(settings.log_format, &settings.log)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = settings.workers {
        runtime.worker_threads(n.into());
    }
    let runtime = runtime
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => runtime
            .block_on(service::serve(settings))
            .context("usersvc stopped with an error"),
        Command::Import { file } => {
            let n = runtime
                .block_on(service::import(&settings, &file))
                .with_context(|| format!("nothing was imported from {}", file.display()))?;
            println!("imported {n} users from {}", file.display());
            Ok(())
        }
    }
}

fn init_logging(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("bad log filter {filter:?} (try info or service=debug)"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}
