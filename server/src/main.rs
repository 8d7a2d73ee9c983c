use clap::Parser;
use realtime_server::config::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let settings = match Cli::parse().validate() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("realtime-server: invalid configuration: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    init_logging(settings.log_format);
    let runtime = match realtime_server::app::runtime(settings.worker_threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("realtime-server: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(realtime_server::app::run(settings));
    // Tasks still parked (aborted connections, timers) must not delay the exit: the grace
    // period has been spent already.
    runtime.shutdown_background();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `RUST_LOG` overrides the default level (info, with the chatty socket.io internals at warn).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,socketioxide=warn,engineioxide=warn,fred=warn"));
    // Colours only on a terminal, never in log files or collectors, and never with NO_COLOR.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
