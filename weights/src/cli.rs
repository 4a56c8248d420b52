//! `cogrs weights ...`: the subcommands, for the `cogrs` binary to embed.

use crate::arch::Dtype;
use crate::build::{build, BuildRequest};
use crate::quant::QuantArg;
use crate::Error;
use std::path::PathBuf;

#[derive(Debug, clap::Subcommand)]
pub enum WeightsCommand {
    /// Compile a Hugging Face checkpoint folder or a GGUF file into a deployable folder.
    Build(BuildArgs),
    /// Check a compiled folder against its manifest (sizes and sha256 of every file).
    Verify {
        /// The compiled folder.
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Checkpoint folder (config.json + *.safetensors) or a .gguf file.
    pub checkpoint: PathBuf,
    /// Output folder; must not exist unless --force.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Compute dtype (default: per architecture, recorded in the manifest).
    #[arg(long, value_enum)]
    pub dtype: Option<Dtype>,
    /// Linear-weight quantisation (default: per architecture).
    #[arg(long, value_enum)]
    pub quant: Option<QuantArg>,
    /// Replace an existing output folder.
    #[arg(long)]
    pub force: bool,
}

pub fn run(cmd: WeightsCommand) -> Result<(), Error> {
    match cmd {
        WeightsCommand::Build(a) => {
            let req = BuildRequest {
                input: a.checkpoint,
                output: a.output,
                dtype: a.dtype,
                quant: a.quant,
                force: a.force,
                command: std::env::args().collect(),
            };
            let summary = build(&req)?;
            let m = &summary.manifest;
            let total: u64 = m.files.values().map(|f| f.size).sum();
            println!(
                "built {} ({}, linear {}, lm_head {}) into {}: {} files, {:.1} MiB",
                m.architecture,
                m.dtype,
                m.quantization
                    .get("linear")
                    .map(String::as_str)
                    .unwrap_or("none"),
                m.quantization
                    .get("lm_head")
                    .map(String::as_str)
                    .unwrap_or("none"),
                req.output.display(),
                m.files.len(),
                total as f64 / (1 << 20) as f64
            );
            if !summary.reports.is_empty() {
                let worst = summary
                    .reports
                    .iter()
                    .max_by(|a, b| a.rel_rmse.total_cmp(&b.rel_rmse))
                    .expect("non-empty");
                println!(
                    "quantised {} tensors; worst relative RMS error {:.4} ({}), see quantization_report.json",
                    summary.reports.len(),
                    worst.rel_rmse,
                    worst.tensor
                );
            }
            Ok(())
        }
        WeightsCommand::Verify { dir } => {
            let m = crate::verify::verify(&dir)?;
            println!(
                "{}: {} files match the manifest",
                dir.display(),
                m.files.len()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// Stands in for the `cogrs` binary, which nests these under `weights`.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: WeightsCommand,
    }

    #[test]
    fn parses_the_documented_form() {
        let cli = Cli::try_parse_from([
            "cogrs", "build", "ckpt", "-o", "out", "--dtype", "bf16", "--quant", "hqq8",
        ])
        .unwrap();
        match cli.cmd {
            WeightsCommand::Build(a) => {
                assert_eq!(a.checkpoint, PathBuf::from("ckpt"));
                assert_eq!(a.output, PathBuf::from("out"));
                assert_eq!(a.dtype, Some(Dtype::Bf16));
                assert_eq!(a.quant, Some(QuantArg::Hqq8));
                assert!(!a.force);
            }
            other => panic!("parsed as {other:?}"),
        }
        assert!(
            Cli::try_parse_from(["cogrs", "build", "ckpt", "-o", "o", "--quant", "q3"]).is_err()
        );
        assert!(matches!(
            Cli::try_parse_from(["cogrs", "verify", "dir"]).unwrap().cmd,
            WeightsCommand::Verify { .. }
        ));
    }
}
