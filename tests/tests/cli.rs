//! The command line, as a `cog predict` user drives it, and the committed wire snapshot.

use cog_tests::{cogrs_bin, hello_bin};
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};

fn hello(dir: &std::path::Path, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut child = Command::new(hello_bin())
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn predict_prints_object_output_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = hello(
        dir.path(),
        &["predict", "-i", "text=hi", "-i", "repeat=2"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["text"], "HI HI");
    assert!(v["file"].is_null());
}

#[test]
fn predict_writes_file_outputs_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = hello(
        dir.path(),
        &["predict", "-i", "text=Doc", "-i", "write_file=true"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Written output to: output.file.txt"), "{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("output.file.txt")).unwrap(),
        "DOC"
    );
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["file"], "output.file.txt");
    let (code, _, err) = hello(
        dir.path(),
        &[
            "predict",
            "-i",
            "text=x",
            "-i",
            "write_file=true",
            "-o",
            "res.txt",
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(dir.path().join("res.file.txt").exists(), "{err}");
}

#[test]
fn predict_reports_validation_errors_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = hello(dir.path(), &["predict", "-i", "repeat=30"], None);
    assert_eq!(code, 1);
    assert!(
        err.contains("The inputs you passed could not be validated:"),
        "{err}"
    );
    assert!(
        err.contains("repeat: 30 is greater than the maximum of 10"),
        "{err}"
    );
    assert!(err.contains("text: Field required"), "{err}");
    let (code, _, err) = hello(
        dir.path(),
        &["predict", "-i", "text=a", "-i", "repeat=many"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("-i repeat=many: not an integer"), "{err}");
}

#[test]
fn predict_reports_failures_like_cog() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = hello(
        dir.path(),
        &["predict", "-i", "text=a", "-i", "fail=true"],
        None,
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("Prediction failed with status \"failed\": asked to fail"),
        "{err}"
    );
}

#[test]
fn predict_takes_json_and_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pic.png"), [1u8; 321]).unwrap();
    std::fs::write(
        dir.path().join("in.json"),
        r#"{"text": "from file", "mode": "lower"}"#,
    )
    .unwrap();
    let (code, out, err) = hello(dir.path(), &["predict", "--json", "@in.json"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"from file\""), "{out}");
    let (code, out, err) = hello(
        dir.path(),
        &["predict", "--json", "@-", "-i", "image=@pic.png"],
        Some(r#"{"text": "Piped"}"#),
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"PIPED\""), "{out}");
    assert!(err.contains("image of 321 bytes"), "{err}");
}

#[test]
fn hello_schema_matches_the_committed_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, _) = hello(dir.path(), &["schema"], None);
    assert_eq!(code, 0);
    let snapshot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("snapshots/hello.openapi.json");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&snapshot, &out).unwrap();
    }
    let committed =
        std::fs::read_to_string(&snapshot).expect("snapshot (UPDATE_SNAPSHOTS=1 writes it)");
    assert_eq!(
        out, committed,
        "hello's OpenAPI document drifted; review and run with UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn cogrs_names_unknown_predictors() {
    let out = Command::new(cogrs_bin())
        .args(["schema", "no-such-model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown predictor \"no-such-model\""));
}
