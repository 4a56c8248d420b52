//! Finding ONNX Runtime and choosing the provider. One test, because it changes process environment
//! variables (tests in one binary run on parallel threads).

use cog_predictors::engine::ort_env::{find_library, runtime, Ep, OrtEnvError};

#[test]
fn library_lookup_and_provider_choice() {
    // An explicit ORT_DYLIB_PATH that does not exist is an error naming it, not a silent fallback.
    std::env::set_var("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so");
    let err = find_library().unwrap_err();
    assert!(matches!(err, OrtEnvError::DylibPathMissing(_)), "{err}");
    assert!(err.to_string().contains("/nonexistent/libonnxruntime.so"));
    std::env::remove_var("ORT_DYLIB_PATH");

    // The "not found" message says how to get the library.
    let msg = OrtEnvError::LibraryNotFound {
        searched: "x".into(),
    }
    .to_string();
    assert!(
        msg.contains("scripts/install-ort")
            && msg.contains("ORT_DYLIB_PATH")
            && msg.contains("onnxruntime-gpu"),
        "{msg}"
    );

    // Without the variable, the project's install (scripts/setup) is found and loads.
    let lib = find_library().unwrap_or_else(|e| panic!("{e}\n(run scripts/setup first)"));
    assert!(lib.ends_with("libonnxruntime.so"), "{}", lib.display());
    assert_eq!(Ep::parse(" CUDA ").unwrap(), Ep::Cuda);
    assert!(matches!(Ep::parse("tpu"), Err(OrtEnvError::BadEp(_))));
    let want = match std::env::var("COG_EP") {
        Ok(s) => Ep::parse(&s).unwrap(),
        Err(_) => Ep::Cpu, // the project's install is the CPU wheel
    };
    let rt = runtime().unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os("ORT_DYLIB_PATH").is_none() {
        assert_eq!(rt.ep, want);
    }
    assert!(
        rt.version.contains("1.31"),
        "ONNX Runtime 1.31 expected, got {}",
        rt.version
    );
}
