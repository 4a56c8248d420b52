//! Faults around the real `hello` over real HTTP (127.0.0.1): webhook receivers that fail, time
//! out or are not listening, then recover; upload targets that fail, refuse or never answer;
//! input URLs that are slow, endless or huge; SIGTERM past the shutdown deadline.

#[path = "reliability_support/mod.rs"]
mod support;

use std::time::Duration;
use support::hello_with_slots;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_webhook_survives_5xx_and_a_receiver_that_is_not_listening() {
    let server = hello_with_slots(1, &[], &[]).await;
    let o = support::fault_webhook_5xx(&server, 0).await;
    assert!(o.held, "5xx: {}", o.detail);
    let o = support::fault_webhook_refused(&server, 0, Duration::from_millis(1500)).await;
    assert!(o.held, "refused: {}", o.detail);
}

/// The sender's webhook timeout is 30 s and has no knob, so this takes about 31 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminal_webhook_survives_a_receiver_that_sleeps_past_the_timeout() {
    let server = hello_with_slots(1, &[], &[]).await;
    let o = support::fault_webhook_timeout(&server, 0).await;
    assert!(o.held, "{}", o.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_target_down_fails_clearly_and_leaves_no_temp_files() {
    for kind in ["500", "refused", "hang"] {
        let o = support::fault_upload(kind).await;
        assert!(o.held, "upload {kind}: {}", o.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endless_and_huge_input_urls_are_bounded() {
    for (what, o) in support::fault_input_urls().await {
        assert!(o.held, "{what}: {}", o.detail);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_deadline_cancels_delivers_and_restarts_clean() {
    let o = support::fault_sigterm_past_deadline(0).await;
    assert!(o.held, "{}", o.detail);
}
