//! Serving: bind, run setup in the background, and shut down gracefully on `/shutdown`, SIGTERM
//! (unless `--await-explicit-shutdown true`) or SIGINT.

use crate::http::routes;
use crate::service::PredictionService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    pub port: u16,
    pub await_explicit_shutdown: bool,
    /// How long running predictions may take to finish after a shutdown request
    /// (`COG_SHUTDOWN_TIMEOUT`, default 30 s); the rest are cancelled.
    pub drain_timeout: Duration,
}

impl ServeOptions {
    pub fn drain_timeout_from_env() -> Duration {
        std::env::var("COG_SHUTDOWN_TIMEOUT")
            .ok()
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|v| *v >= 0.0)
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(30))
    }
}

/// Serves until shutdown; returns once predictions are drained and webhooks delivered.
pub async fn serve(service: Arc<PredictionService>, opts: ServeOptions) -> std::io::Result<()> {
    let addr: SocketAddr = format!("{}:{}", opts.host, opts.port)
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{e}")))?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, predictor = %service.def().name, "serving the Cog HTTP API");
    let setup = service.clone();
    tokio::spawn(async move { setup.run_setup().await });

    let signal_service = service.clone();
    let explicit = opts.await_explicit_shutdown;
    let drain = opts.drain_timeout;
    let shutdown = async move {
        wait_for_shutdown(&signal_service, explicit).await;
        signal_service.drain(drain).await;
        tracing::info!("drained; closing connections");
    };
    axum::serve(listener, routes(service))
        .with_graceful_shutdown(shutdown)
        .await?;
    tracing::info!("server stopped");
    Ok(())
}

async fn wait_for_shutdown(service: &PredictionService, await_explicit: bool) {
    let token = service.shutdown_token();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = async { match int.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                    tracing::info!("SIGINT received; shutting down");
                    return;
                }
                _ = async { match term.as_mut() { Some(s) => { s.recv().await; } None => std::future::pending().await } } => {
                    if await_explicit {
                        tracing::info!("SIGTERM ignored: waiting for POST /shutdown (--await-explicit-shutdown)");
                        continue;
                    }
                    tracing::info!("SIGTERM received; shutting down");
                    return;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = await_explicit;
        tokio::select! {
            _ = token.cancelled() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
}
