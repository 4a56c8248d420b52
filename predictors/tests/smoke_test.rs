//! The build's smoke test (src/smoke_test.rs) on the tiny random Gemma 3 and Llama fixtures of
//! cog-weights: int8 passes the quantisation thresholds and leaves smoke_test.json in a folder
//! that still verifies; a deliberately broken build (95 % magnitude sparsity on every decoder
//! linear) fails the pruning thresholds and its folder is removed; a moderate pruning passes.

use cog_predictors::smoke_test::{check, default_thresholds, is_optimised, SmokeError, REPORT};
use cog_weights::arch::Dtype;
use cog_weights::build::{build, BuildRequest};
use cog_weights::prune::source::{PruneMethod, PruneRequest};
use cog_weights::quant::QuantArg;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../weights/fixtures")
        .join(name)
}

fn request(name: &str, out: PathBuf, quant: QuantArg, prune: Option<PruneRequest>) -> BuildRequest {
    BuildRequest {
        input: fixture(name),
        output: out,
        dtype: Some(Dtype::Fp32),
        quant: Some(quant),
        force: false,
        prune,
        command: vec!["test".into()],
    }
}

fn magnitude(sparsity: f64, all_linears: bool) -> Option<PruneRequest> {
    Some(PruneRequest {
        method: PruneMethod::Magnitude,
        sparsity,
        gradual_steps: 1,
        compact: false,
        filter_map: all_linears.then(|| fixture("../recipes/gemma3.prune.all-linears.json")),
    })
}

/// Builds, then smoke-tests with the default thresholds.
fn smoke(
    name: &str,
    quant: QuantArg,
    prune: Option<PruneRequest>,
) -> (
    tempfile::TempDir,
    PathBuf,
    Result<cog_predictors::smoke_test::SmokeReport, SmokeError>,
) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let req = request(name, out.clone(), quant, prune);
    let m = build(&req).unwrap();
    assert!(is_optimised(&m.manifest));
    let r = check(&req, &m.manifest, None);
    (tmp, out, r)
}

#[test]
fn int8_passes_and_is_recorded() {
    for name in ["gemma3_text", "llama"] {
        let (_t, out, r) = smoke(name, QuantArg::Rtn8, None);
        let r = r.unwrap_or_else(|e| panic!("{name}: {e}"));
        eprintln!("{name} rtn8: {:?}", r.measured);
        assert!(r.passed);
        assert_eq!(r.thresholds, default_thresholds(false));
        assert_eq!(r.prompt, "fixed ids");
        assert!(r.measured.top1_agreement >= 0.9 && r.measured.mean_kl <= 0.1);
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(REPORT)).unwrap()).unwrap();
        assert_eq!(written["passed"], true);
        let m = cog_weights::verify::verify(&out).unwrap();
        assert!(m.files.contains_key(REPORT), "manifest lists {REPORT}");
    }
}

#[test]
fn broken_pruning_fails_and_removes_the_folder() {
    let (_t, out, r) = smoke("gemma3_text", QuantArg::None, magnitude(0.95, true));
    match r {
        Err(SmokeError::Failed { why, report, .. }) => {
            eprintln!("95 % magnitude: {why}\n{report}");
            assert!(why.contains("top-1") || why.contains("KL"));
        }
        Err(e) => panic!("expected a threshold failure, got {e}"),
        Ok(r) => panic!("95 % magnitude passed: {:?}", r.measured),
    }
    assert!(!out.exists(), "a failed build leaves no folder");
}

#[test]
fn moderate_pruning_passes() {
    let (_t, out, r) = smoke("gemma3_text", QuantArg::None, magnitude(0.10, false));
    let r = r.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("10 % magnitude under the map: {:?}", r.measured);
    assert!(r.passed && out.join(REPORT).is_file());
    assert_eq!(r.thresholds, default_thresholds(true));
}

/// The `cogrs weights build` command line: a quantised build prints the smoke test's numbers and
/// keeps the folder; the broken build exits non-zero and leaves nothing; `--no-smoke-test` skips.
#[test]
fn cli_gates_the_build() {
    let tmp = tempfile::tempdir().unwrap();
    let cogrs = |extra: &[&str], out: &std::path::Path| {
        let mut args = vec![
            "weights".to_string(),
            "build".into(),
            fixture("gemma3_text").display().to_string(),
            "-o".into(),
            out.display().to_string(),
            "--dtype".into(),
            "fp32".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        std::process::Command::new(env!("CARGO_BIN_EXE_cogrs"))
            .args(&args)
            .output()
            .unwrap()
    };
    let map = fixture("../recipes/gemma3.prune.all-linears.json");
    let map = map.to_str().unwrap();
    let broken = [
        "--prune",
        "magnitude",
        "--sparsity",
        "0.95",
        "--filter-map",
        map,
    ];

    let ok = tmp.path().join("rtn8");
    let o = cogrs(&["--quant", "rtn8"], &ok);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("smoke test passed"), "{stdout}");
    assert!(ok.join(REPORT).is_file());

    let bad = tmp.path().join("broken");
    let o = cogrs(&broken, &bad);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("smoke test failed"), "{stderr}");
    assert!(!bad.exists());

    let skipped = tmp.path().join("skipped");
    let mut args = broken.to_vec();
    args.push("--no-smoke-test");
    let o = cogrs(&args, &skipped);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(skipped.join("manifest.json").is_file() && !skipped.join(REPORT).exists());

    // Unoptimised builds are not smoke-tested.
    let plain = tmp.path().join("plain");
    let o = cogrs(&[], &plain);
    assert!(o.status.success());
    assert!(!plain.join(REPORT).exists());
}
