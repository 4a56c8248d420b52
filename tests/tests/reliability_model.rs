//! Faults on the real model: `cogrs serve smollm3` on SmolLM2-135M (CPU), over real HTTP.
//! Weights that fail their checksum, a real ONNX Runtime error inside a prediction (its arena
//! cannot allocate under a capped address space), SIGTERM during generation, and SIGKILL while
//! the optimised-model cache is being written.

#[path = "reliability_support/mod.rs"]
mod support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_failing_their_checksum_are_setup_failed_with_the_reason() {
    let o = support::fault_corrupt_weights(0.5).await;
    assert!(o.held, "{}", o.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onnx_runtime_error_fails_that_prediction_and_the_next_succeeds() {
    let dir = support::copy_model();
    let o = support::fault_ort_oom(dir.path(), 2000).await;
    assert!(o.held, "{}", o.detail);
}

/// Past a zero deadline the generation is cancelled; the campaign also runs the draining case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_generation_cancels_past_the_deadline_and_the_next_start_is_clean() {
    let dir = support::copy_model();
    let o = support::fault_smollm3_sigterm(dir.path(), "0").await;
    assert!(o.held, "{}", o.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_the_ort_cache_is_written_then_clean_starts() {
    let o = support::fault_kill_during_setup("cache").await;
    assert!(o.held, "{}", o.detail);
}
