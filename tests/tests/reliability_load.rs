//! Load on the real `hello` over real HTTP (127.0.0.1): async and sync clients at and above the
//! slot count for a bounded time. Every accepted prediction ends in exactly one terminal state and
//! one terminal webhook, excess requests get 409 (never a hang), and the server's resident memory
//! and open file descriptors stay flat. The campaign (`--bin reliability`) runs the same driver
//! for 10,000 requests and more.

#[path = "reliability_support/mod.rs"]
mod support;

use std::time::Duration;
use support::{hello_with_slots, run_load, Hook, LoadParams};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn load_above_the_slot_count_ends_every_prediction_once() {
    let hook = Hook::start().await;
    let server = hello_with_slots(2, &[], &[("COG_LOG_LEVEL", "warn")]).await;
    let params = LoadParams {
        slots: 2,
        async_clients: 3,
        sync_clients: 3,
        requests: 3000,
        time_limit: Duration::from_secs(40),
        delay: 0.0,
        warmup: 500,
        hang_after: Duration::from_secs(30),
        pace: false,
    };
    let r = run_load(&server, &hook, &params).await;
    eprintln!("{r:#?}");
    // Enough happened for the invariants to mean something.
    assert!(
        r.requests >= 1000,
        "only {} requests in the time limit",
        r.requests
    );
    assert!(r.accepted_async > 100 && r.accepted_sync > 100, "{r:?}");
    assert!(
        r.conflicts > 0,
        "6 clients on 2 slots never met a 409: {r:?}"
    );
    // 64 MiB of RSS slack: allocator arenas settle under load; a leak of a few KiB per
    // prediction over thousands of them does not fit.
    let v = r.violations(64 * 1024, 8);
    assert!(v.is_empty(), "{v:#?}\n{r:#?}");
    assert!(
        r.max_409_ms < 5000.0,
        "a 409 took {} ms: excess requests must be refused at once",
        r.max_409_ms
    );
    assert_eq!(
        server.health().await.unwrap()["status"],
        "READY",
        "idle again after the load"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_predictions_hold_slots_and_excess_gets_409_at_once() {
    // Each prediction holds its slot for 200 ms; 8 clients on 2 slots.
    let hook = Hook::start().await;
    let server = hello_with_slots(2, &[], &[("COG_LOG_LEVEL", "warn")]).await;
    let params = LoadParams {
        slots: 2,
        async_clients: 4,
        sync_clients: 4,
        requests: 100_000,
        time_limit: Duration::from_secs(10),
        delay: 0.2,
        warmup: 50,
        hang_after: Duration::from_secs(30),
        pace: false,
    };
    let r = run_load(&server, &hook, &params).await;
    eprintln!("{r:#?}");
    assert!(r.conflicts > r.accepted_async + r.accepted_sync, "{r:?}");
    let v = r.violations(64 * 1024, 8);
    assert!(v.is_empty(), "{v:#?}\n{r:#?}");
    assert!(r.max_409_ms < 5000.0, "{r:?}");
}
