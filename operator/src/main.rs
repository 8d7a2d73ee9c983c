//! `realtime-operator`: see [`realtime_operator::runtime`] for the commands and flags.

use clap::Parser;
use realtime_operator::runtime::{Cli, Command, error_chain, init_logging, run};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Crd) => {
            print!("{}", realtime_operator::crd_yaml());
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Run(args)) => *args,
        None => cli.run,
    };
    init_logging(args.log_format);
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = error_chain(&e), "realtime-operator failed");
            std::process::ExitCode::FAILURE
        }
    }
}
