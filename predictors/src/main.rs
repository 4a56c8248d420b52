//! `cogrs`: serves the predictors behind the Cog HTTP API, runs one-off predictions, prints
//! schemas, and compiles checkpoints into the folders the predictors load.

use clap::{Parser, Subcommand};
use cog_runtime::cli::{init_logging, run, RuntimeCommand};
use cog_weights::cli::WeightsCommand;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "cogrs",
    version,
    about = "Optimized ONNX models behind the Cog HTTP predictor protocol"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Runtime(RuntimeCommand),
    /// Compile and check model folders.
    #[command(subcommand)]
    Weights(WeightsCommand),
}

fn main() -> ExitCode {
    init_logging();
    match Cli::parse().command {
        Command::Runtime(cmd) => run(cmd, &cog_predictors::registry()),
        Command::Weights(cmd) => match cog_weights::cli::run(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
