//! The transport-free prediction service: setup and health, slots, the registry of running
//! predictions, and the task that takes one prediction from its input to its terminal state.
//! HTTP handlers (and `cogrs predict`) only translate to and from it.

use crate::files::{self, FileLimits, OutputFiles};
use crate::prediction::{Outcome, Prediction};
use crate::predictor::{PredictContext, PredictError, SetupContext};
use crate::registry::{ErasedPredictor, PredictorDef, ValidInput};
use crate::validate::{FieldError, InputValidator};
use crate::webhook::{TraceContext, WebhookConfig, WebhookEvent, WebhookSender};
use chrono::{SecondsFormat, Utc};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The Cog protocol version this runtime implements (coglet's), reported as `cog_version`.
pub const PROTOCOL_VERSION: &str = "0.23.1";

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// `concurrency.max` from cog.yaml: predictions that may run at once.
    pub max_concurrency: usize,
    pub upload_url: Option<String>,
    pub weights: Option<String>,
    /// `COG_SETUP_TIMEOUT`: setup taking longer fails.
    pub setup_timeout: Option<Duration>,
    pub webhook: WebhookConfig,
    pub file_limits: FileLimits,
    /// `COG_DEFUNCT_AFTER_PANICS`: this many predictor panics in a row, with no prediction succeeding in
    /// between (one returning normally, even with an error, resets the count), mark the process DEFUNCT
    /// (its state is presumably broken; the orchestrator restarts it).
    /// 0 never does. One panic only fails its own prediction.
    pub defunct_after_panics: u32,
}

impl ServiceConfig {
    pub fn from_env(max_concurrency: usize) -> Self {
        Self {
            max_concurrency: max_concurrency.max(1),
            upload_url: None,
            weights: std::env::var("COG_WEIGHTS").ok().filter(|w| !w.is_empty()),
            setup_timeout: std::env::var("COG_SETUP_TIMEOUT")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| *v > 0.0)
                .map(Duration::from_secs_f64),
            webhook: WebhookConfig::from_env(),
            file_limits: FileLimits::from_env(),
            defunct_after_panics: std::env::var("COG_DEFUNCT_AFTER_PANICS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Ready,
    SetupFailed,
    Defunct,
}

struct SetupRecord {
    phase: Phase,
    started_at: Option<String>,
    completed_at: Option<String>,
    /// The running setup's log, shown live by the health check.
    logs: Arc<Mutex<String>>,
}

/// Predictor panics since start, for the health check.
#[derive(Default)]
struct PanicRecord {
    count: u64,
    /// Panics since the last prediction that succeeded.
    consecutive: u32,
    /// (prediction id, panic message, time) of the latest.
    last: Option<(String, String, String)>,
}

/// What a new prediction carries besides its input.
#[derive(Debug, Clone, Default)]
pub struct PredictionRequest {
    pub id: String,
    pub input: Value,
    pub webhook: Option<String>,
    pub webhook_events_filter: Option<Vec<WebhookEvent>>,
    pub context: HashMap<String, String>,
    pub trace: TraceContext,
}

#[derive(Debug)]
pub enum SubmitError {
    NotReady,
    AtCapacity,
    Invalid(Vec<FieldError>),
    ShuttingDown,
    /// A prediction with this id is running (a repeated `PUT` gets that prediction instead).
    DuplicateId,
}

pub struct PredictionService {
    def: PredictorDef,
    validator: InputValidator,
    config: ServiceConfig,
    setup: Mutex<SetupRecord>,
    predictor: OnceLock<Arc<dyn ErasedPredictor>>,
    slots: Arc<Semaphore>,
    predictions: Mutex<HashMap<String, Arc<Prediction>>>,
    /// Made on first use (webhooks, file inputs, uploads): its TLS roots cost megabytes of
    /// memory that a server never sending a webhook should not carry.
    client: OnceLock<reqwest::Client>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    draining: std::sync::atomic::AtomicBool,
    panics: Mutex<PanicRecord>,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl PredictionService {
    pub fn new(def: PredictorDef, config: ServiceConfig) -> Result<Arc<Self>, String> {
        let validator = InputValidator::new(&def.schema.input)?;
        Ok(Arc::new(Self {
            slots: Arc::new(Semaphore::new(config.max_concurrency)),
            def,
            validator,
            config,
            setup: Mutex::new(SetupRecord {
                phase: Phase::Starting,
                started_at: None,
                completed_at: None,
                logs: Arc::default(),
            }),
            predictor: OnceLock::new(),
            predictions: Mutex::default(),
            client: OnceLock::new(),
            tasks: TaskTracker::new(),
            shutdown: CancellationToken::new(),
            draining: false.into(),
            panics: Mutex::default(),
        }))
    }

    fn client(&self) -> &reqwest::Client {
        self.client.get_or_init(|| {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()
                // Building fails only when the TLS backend cannot initialise at all.
                .unwrap_or_else(|_| reqwest::Client::new())
        })
    }

    pub fn def(&self) -> &PredictorDef {
        &self.def
    }

    pub fn schema_document(&self) -> &Value {
        &self.def.schema.document
    }

    /// Runs setup on a blocking thread; the server answers health checks meanwhile.
    pub async fn run_setup(self: &Arc<Self>) {
        let ctx = SetupContext::new(self.config.weights.clone());
        {
            let mut rec = self.setup_record();
            rec.started_at = Some(now());
            rec.logs = ctx.logs.clone();
        }
        tracing::info!(predictor = %self.def.name, "setup started");
        let def = self.def.clone();
        let task_ctx = ctx.clone();
        let task = tokio::task::spawn_blocking(move || def.setup(&task_ctx));
        let result = match self.config.setup_timeout {
            Some(limit) => match tokio::time::timeout(limit, task).await {
                Ok(joined) => joined,
                Err(_) => {
                    self.fail_setup(
                        &ctx,
                        format!("setup timed out after {:.0} s", limit.as_secs_f64()),
                    );
                    return;
                }
            },
            None => task.await,
        };
        match result {
            Ok(Ok(predictor)) => {
                let _ = self.predictor.set(predictor);
                let mut rec = self.setup_record();
                rec.phase = Phase::Ready;
                rec.completed_at = Some(now());
                drop(rec);
                tracing::info!(predictor = %self.def.name, "setup succeeded; ready");
                write_readiness_file();
            }
            Ok(Err(e)) => self.fail_setup(&ctx, format!("setup failed: {e}")),
            Err(e) => self.fail_setup(&ctx, format!("setup panicked: {}", panic_message(e))),
        }
    }

    fn fail_setup(&self, ctx: &SetupContext, reason: String) {
        tracing::error!(predictor = %self.def.name, "{reason}");
        ctx.log(&reason);
        let mut rec = self.setup_record();
        rec.phase = Phase::SetupFailed;
        rec.completed_at = Some(now());
    }

    fn setup_record(&self) -> std::sync::MutexGuard<'_, SetupRecord> {
        self.setup.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_ready(&self) -> bool {
        self.setup_record().phase == Phase::Ready
    }

    /// Marks the process unusable (e.g. the device is lost); health reports DEFUNCT.
    pub fn set_defunct(&self, reason: &str) {
        tracing::error!("defunct: {reason}");
        self.setup_record().phase = Phase::Defunct;
    }

    /// Counts a predictor panic; enough of them in a row make the process DEFUNCT.
    fn record_panic(&self, id: &str, message: &str) {
        let consecutive = {
            let mut p = self.panics.lock().unwrap_or_else(|e| e.into_inner());
            p.count += 1;
            p.consecutive += 1;
            p.last = Some((id.to_string(), message.to_string(), now()));
            p.consecutive
        };
        tracing::error!(prediction_id = %id, consecutive, "predictor panicked: {message}");
        let limit = self.config.defunct_after_panics;
        if limit > 0 && consecutive >= limit {
            self.set_defunct(&format!(
                "{consecutive} predictor panics in a row (COG_DEFUNCT_AFTER_PANICS={limit})"
            ));
        }
    }

    /// The `/health-check` body.
    pub fn health(&self) -> Value {
        let rec = self.setup_record();
        let mut user_error = None;
        let status = match rec.phase {
            Phase::Starting => "STARTING",
            Phase::SetupFailed => "SETUP_FAILED",
            Phase::Defunct => "DEFUNCT",
            Phase::Ready => match self.predictor.get().map(|p| p.healthcheck()) {
                Some(Err(e)) => {
                    user_error = Some(e);
                    "UNHEALTHY"
                }
                _ if self.slots.available_permits() == 0 => "BUSY",
                _ => "READY",
            },
        };
        let mut setup = serde_json::Map::new();
        if let Some(t) = &rec.started_at {
            setup.insert("started_at".into(), json!(t));
        }
        if let Some(t) = &rec.completed_at {
            setup.insert("completed_at".into(), json!(t));
        }
        let setup_status = match rec.phase {
            Phase::Starting => "starting",
            Phase::SetupFailed => "failed",
            Phase::Ready | Phase::Defunct => "succeeded",
        };
        setup.insert("status".into(), json!(setup_status));
        let logs = rec.logs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        setup.insert("logs".into(), json!(logs));
        let mut body = json!({
            "status": status,
            "setup": setup,
            "version": {"cogrs": env!("CARGO_PKG_VERSION"), "cog_protocol": PROTOCOL_VERSION},
        });
        if let Some(e) = user_error {
            body["user_healthcheck_error"] = json!(e);
        }
        // Present only after a panic, so a healthy server's body stays the one coglet sends.
        let panics = self.panics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((id, message, at)) = &panics.last {
            body["predictor_panics"] = json!({
                "count": panics.count,
                "consecutive": panics.consecutive,
                "last": {"prediction_id": id, "message": message, "at": at},
            });
        }
        body
    }

    /// A running prediction by id.
    pub fn get(&self, id: &str) -> Option<Arc<Prediction>> {
        self.predictions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Cancels a running prediction; false when none has that id.
    pub fn cancel(&self, id: &str) -> bool {
        match self.get(id) {
            Some(p) => {
                tracing::info!(prediction_id = %id, "cancel requested");
                p.cancel.cancel();
                true
            }
            None => false,
        }
    }

    /// Validates, takes a slot and starts the prediction in the background.
    pub fn submit(
        self: &Arc<Self>,
        req: PredictionRequest,
    ) -> Result<Arc<Prediction>, SubmitError> {
        let Some(predictor) = self.predictor.get().cloned() else {
            return Err(SubmitError::NotReady);
        };
        if !self.is_ready() {
            return Err(SubmitError::NotReady);
        }
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(SubmitError::ShuttingDown);
        }
        let mut input = req.input;
        let stripped = self.validator.strip_unknown(&mut input);
        if !stripped.is_empty() {
            tracing::warn!(prediction_id = %req.id, fields = ?stripped, "dropped unknown input fields");
        }
        self.validator
            .validate(&mut input)
            .map_err(SubmitError::Invalid)?;
        // Without file inputs the typed checks can run now, so a bad value is a 422 that takes
        // no slot; with files they run after the download, inside the prediction.
        let early = if self.validator.file_fields().is_empty() {
            Some(
                predictor
                    .check(input.clone())
                    .map_err(SubmitError::Invalid)?,
            )
        } else {
            None
        };
        let permit = self
            .slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| SubmitError::AtCapacity)?;
        // Checked and registered under one lock, so two requests with one id cannot both start.
        let mut registry = self.predictions.lock().unwrap_or_else(|e| e.into_inner());
        if registry.contains_key(&req.id) {
            return Err(SubmitError::DuplicateId);
        }
        let webhook = req.webhook.map(|url| {
            let filter: HashSet<WebhookEvent> = req
                .webhook_events_filter
                .unwrap_or_else(|| WebhookEvent::ALL.to_vec())
                .into_iter()
                .collect();
            WebhookSender::spawn(
                url,
                filter,
                &self.config.webhook,
                req.trace,
                self.client().clone(),
                &self.tasks,
            )
        });
        let prediction = Prediction::new(req.id.clone(), self.validator.masked(&input), webhook);
        registry.insert(req.id.clone(), prediction.clone());
        drop(registry);
        tracing::info!(prediction_id = %req.id, "prediction started");
        let service = self.clone();
        let task_prediction = prediction.clone();
        // One blocking thread carries the prediction from start to end: model code is blocking, and
        // the few async steps (downloads, uploads) run on the runtime from there. One hand-off to
        // the thread and one back to the waiting handler is all a no-op prediction costs.
        let handle = tokio::runtime::Handle::current();
        self.tasks.spawn_blocking(move || {
            let run = Run {
                predictor,
                prediction: task_prediction.clone(),
                input,
                early,
                context: req.context,
            };
            let outcome = service.execute(run, &handle);
            // The slot is free before anyone hears the outcome, so a client that sends its next
            // request after this response never meets a 409.
            drop(permit);
            service
                .predictions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&task_prediction.id);
            log_outcome(&task_prediction.id, &outcome);
            task_prediction.finish(outcome);
        });
        Ok(prediction)
    }

    fn execute(&self, run: Run, rt: &tokio::runtime::Handle) -> Outcome {
        let Run {
            predictor,
            prediction,
            mut input,
            early,
            context,
        } = run;
        prediction.set_processing();
        let ctx = PredictContext {
            id: prediction.id.clone(),
            cancel: prediction.cancel.clone(),
            events: prediction.clone(),
            scratch: OnceLock::new(),
            context,
        };
        let valid = match early {
            Some(v) => v,
            None => {
                let dir = match ctx.scratch_tempdir() {
                    Ok(d) => d.path().join("inputs"),
                    Err(e) => return Outcome::Failed(format!("cannot create temp dir: {e}")),
                };
                let fetch = files::fetch_inputs(
                    self.client(),
                    &mut input,
                    self.validator.file_fields(),
                    &dir,
                    &self.config.file_limits,
                );
                let fetched = rt.block_on(async {
                    tokio::select! {
                        r = fetch => Some(r),
                        _ = prediction.cancel.cancelled() => None,
                    }
                });
                match fetched {
                    None => return Outcome::Canceled,
                    Some(Err(e)) => return Outcome::Failed(e.to_string()),
                    Some(Ok(())) => {}
                }
                match predictor.check(input) {
                    Ok(v) => v,
                    Err(errors) => return Outcome::Invalid(errors),
                }
            }
        };
        // A panicking predictor fails its prediction; the process and the other slots go on.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            predictor.predict(valid, &ctx)
        }));
        if result.is_ok() {
            self.panics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .consecutive = 0;
        }
        let mut output = match result {
            Ok(Ok(output)) => output,
            Ok(Err(PredictError::Canceled)) => return Outcome::Canceled,
            Ok(Err(PredictError::Input(e))) => {
                return Outcome::Invalid(vec![FieldError::value(e.field, e.msg)])
            }
            Ok(Err(PredictError::Failed(msg))) => return Outcome::Failed(msg),
            Err(payload) => {
                let message = panic_text(&*payload);
                self.record_panic(&prediction.id, &message);
                return Outcome::Failed(format!("predictor panicked: {message}"));
            }
        };
        if prediction.cancel.is_cancelled() {
            return Outcome::Canceled;
        }
        let mode = match &self.config.upload_url {
            Some(base) => OutputFiles::Upload { base: base.clone() },
            None => OutputFiles::DataUri,
        };
        // The scratch dir (in `ctx`) lives until the output files are encoded.
        let encoded = rt.block_on(files::encode_outputs(
            self.client(),
            &mut output,
            &self.def.schema.output,
            &mode,
            &prediction.id,
        ));
        drop(ctx);
        match encoded {
            Ok(()) => Outcome::Succeeded(output),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    /// The signal the HTTP server waits on to stop.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    pub fn trigger_shutdown(&self) {
        tracing::info!("shutdown requested");
        self.shutdown.cancel();
    }

    /// Stops taking predictions, waits up to `deadline` for running ones, cancels the rest, then
    /// waits for their terminal webhooks.
    pub async fn drain(&self, deadline: Duration) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.tasks.close();
        let running = self.predictions.lock().map(|m| m.len()).unwrap_or(0);
        if running > 0 {
            tracing::info!(running, "draining predictions");
        }
        if tokio::time::timeout(deadline, self.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("drain deadline passed; cancelling running predictions");
            let all: Vec<_> = self
                .predictions
                .lock()
                .map(|m| m.values().cloned().collect())
                .unwrap_or_default();
            for p in all {
                p.cancel.cancel();
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(60), self.tasks.wait()).await;
    }

    async fn wait_idle(&self) {
        loop {
            if self
                .predictions
                .lock()
                .map(|m| m.is_empty())
                .unwrap_or(true)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

struct Run {
    predictor: Arc<dyn ErasedPredictor>,
    prediction: Arc<Prediction>,
    input: Value,
    early: Option<ValidInput>,
    context: HashMap<String, String>,
}

fn log_outcome(id: &str, outcome: &Outcome) {
    match outcome {
        Outcome::Succeeded(_) => tracing::info!(prediction_id = %id, "prediction succeeded"),
        Outcome::Canceled => tracing::info!(prediction_id = %id, "prediction canceled"),
        Outcome::Failed(e) => tracing::warn!(prediction_id = %id, error = %e, "prediction failed"),
        Outcome::Invalid(e) => {
            tracing::warn!(prediction_id = %id, errors = ?e, "prediction input refused")
        }
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn panic_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(payload) => panic_text(&*payload),
        Err(e) => e.to_string(),
    }
}

/// On Kubernetes, `/var/run/cog/ready` tells the readiness probe that setup finished.
fn write_readiness_file() {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_none() {
        return;
    }
    let dir = std::path::Path::new("/var/run/cog");
    if let Err(e) =
        std::fs::create_dir_all(dir).and_then(|_| std::fs::write(dir.join("ready"), b""))
    {
        tracing::warn!(error = %e, "cannot write /var/run/cog/ready");
    }
}
