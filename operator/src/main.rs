//! `realtime-operator`: see [`realtime_operator::runtime`] for the commands and flags.

use clap::Parser;

#[derive(Parser)]
#[command(name = "realtime-operator", version, about = "Reconciles RealtimeCluster resources")]
enum Cli {
    /// Print the RealtimeCluster CustomResourceDefinition (YAML) to stdout.
    Crd,
}

fn main() {
    match Cli::parse() {
        Cli::Crd => print!("{}", realtime_operator::crd_yaml()),
    }
}
