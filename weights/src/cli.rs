//! `cogrs weights ...`: the subcommands, for the `cogrs` binary to embed.

use crate::arch::Dtype;
use crate::build::{build, BuildRequest};
use crate::prune::source::{PruneMethod, PruneRequest};
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
    /// Prune linear weights before quantisation, gated by the filter map; writes prune_report.json.
    #[arg(long, value_enum, requires = "sparsity")]
    pub prune: Option<PruneMethod>,
    /// Target sparsity of each allowed tensor, in [0, 1] (with --prune).
    #[arg(long, requires = "prune")]
    pub sparsity: Option<f64>,
    /// Steps of the cubic schedule (with --prune gradual).
    #[arg(long, default_value_t = 10, requires = "prune")]
    pub gradual_steps: usize,
    /// Drop the MLP channels structured pruning killed, so the matrices shrink (Gemma 3).
    #[arg(long, requires = "prune")]
    pub compact: bool,
    /// Filter map JSON deciding which tensors may be pruned (default: the architecture's built-in
    /// map, e.g. weights/recipes/gemma3.prune.json).
    #[arg(long, requires = "prune")]
    pub filter_map: Option<PathBuf>,
    /// FLUX pipelines only: a LoRA to pack into the transformer's slots, `NAME=FILE` (NAME: the
    /// trigger set that activates it, e.g. `ghibsky`) or `FILE`; repeat for several.
    #[arg(long = "lora", value_name = "[NAME=]FILE")]
    pub lora: Vec<crate::arch::flux_pipeline::LoraArg>,
}

impl BuildArgs {
    pub fn prune_request(&self) -> Option<PruneRequest> {
        Some(PruneRequest {
            method: self.prune?,
            sparsity: self.sparsity?,
            gradual_steps: self.gradual_steps,
            compact: self.compact,
            filter_map: self.filter_map.clone(),
        })
    }
}

pub fn run(cmd: WeightsCommand) -> Result<(), Error> {
    match cmd {
        WeightsCommand::Build(a) => {
            let prune = a.prune_request();
            let req = BuildRequest {
                input: a.checkpoint,
                output: a.output,
                dtype: a.dtype,
                quant: a.quant,
                force: a.force,
                prune,
                command: std::env::args().collect(),
            };
            let summary = if crate::arch::flux_pipeline::is_flux_pipeline(&req.input) {
                crate::arch::flux_pipeline::build_folder(&req, &a.lora)?
            } else if !a.lora.is_empty() {
                return Err(Error::Unsupported(
                    "--lora applies to FLUX pipeline folders (model_index.json) only".into(),
                ));
            } else {
                build(&req)?
            };
            let m = &summary.manifest;
            let total: u64 = m.files.values().map(|f| f.size).sum();
            if m.architecture == "flux" {
                let q: Vec<String> = m
                    .quantization
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect();
                println!(
                    "built flux ({}, {}) into {}: {} files, {:.1} MiB",
                    m.dtype,
                    q.join(", "),
                    req.output.display(),
                    m.files.len(),
                    total as f64 / (1 << 20) as f64
                );
                return Ok(());
            }
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
            if let Some(p) = &m.pruning {
                println!(
                    "pruned ({}, target {}): {} tensors at {:.4} sparsity, {} left alone; see {}",
                    p.method,
                    p.sparsity,
                    p.pruned_tensors,
                    p.sparsity_of_pruned,
                    p.skipped_tensors,
                    p.report
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
    fn parses_the_flux_form() {
        let cli = Cli::try_parse_from([
            "cogrs",
            "build",
            "flux",
            "-o",
            "out",
            "--quant",
            "int8",
            "--lora",
            "ghibsky=g.st",
            "--lora",
            "dir/prefs.safetensors",
        ])
        .unwrap();
        match cli.cmd {
            WeightsCommand::Build(a) => {
                assert_eq!(a.quant, Some(QuantArg::Rtn8));
                let got: Vec<_> = a
                    .lora
                    .iter()
                    .map(|l| (l.name.as_str(), l.path.clone()))
                    .collect();
                assert_eq!(
                    got,
                    [
                        ("ghibsky", PathBuf::from("g.st")),
                        ("prefs", PathBuf::from("dir/prefs.safetensors"))
                    ]
                );
            }
            other => panic!("parsed as {other:?}"),
        }
        let cli = Cli::try_parse_from(["cogrs", "build", "f", "-o", "o", "--quant", "int4"]);
        assert!(
            matches!(cli.unwrap().cmd, WeightsCommand::Build(a) if a.quant == Some(QuantArg::Rtn4))
        );
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
        let cli = Cli::try_parse_from([
            "cogrs",
            "build",
            "ckpt",
            "-o",
            "out",
            "--prune",
            "structured",
            "--sparsity",
            "0.5",
            "--compact",
            "--filter-map",
            "m.json",
        ])
        .unwrap();
        match cli.cmd {
            WeightsCommand::Build(a) => assert_eq!(
                a.prune_request(),
                Some(PruneRequest {
                    method: PruneMethod::Structured,
                    sparsity: 0.5,
                    gradual_steps: 10,
                    compact: true,
                    filter_map: Some(PathBuf::from("m.json")),
                })
            ),
            other => panic!("parsed as {other:?}"),
        }
        // --prune needs --sparsity, and the pruning options need --prune.
        for bad in [
            &["--prune", "magnitude"][..],
            &["--sparsity", "0.5"][..],
            &["--compact"][..],
        ] {
            let mut args = vec!["cogrs", "build", "ckpt", "-o", "o"];
            args.extend_from_slice(bad);
            assert!(Cli::try_parse_from(&args).is_err(), "{bad:?} parsed");
        }
        assert!(matches!(
            Cli::try_parse_from(["cogrs", "verify", "dir"]).unwrap().cmd,
            WeightsCommand::Verify { .. }
        ));
    }
}
