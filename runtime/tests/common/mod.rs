//! A predictor for the runtime's own tests, driven by its inputs and by `weights` at setup.
#![allow(dead_code)]

use cog_runtime::schemars::JsonSchema;
use cog_runtime::{
    InputError, Path, PredictContext, PredictError, PredictionService, Predictor, PredictorDef,
    Secret, ServiceConfig, SetupContext, SetupError,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Deserialize, JsonSchema)]
pub struct Input {
    /// Text echoed back
    pub text: String,
    #[serde(default)]
    #[schemars(range(min = 0, max = 60))]
    pub delay: f64,
    #[serde(default)]
    pub fail: bool,
    #[serde(default)]
    pub panic: bool,
    pub file: Option<Path>,
    pub token: Option<Secret>,
    #[serde(default)]
    pub write_file: bool,
    #[schemars(length(min = 1, max = 5))]
    pub tag: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct Output {
    pub text: String,
    pub file_bytes: Option<u64>,
    pub file: Option<Path>,
}

pub struct Probe {
    unhealthy: bool,
}

impl Predictor for Probe {
    type Input = Input;
    type Valid = Input;
    type Output = Output;
    const STREAMING: bool = true;

    fn setup(ctx: &SetupContext) -> Result<Self, SetupError> {
        ctx.log("probe setup");
        match ctx.weights.as_deref() {
            Some("fail") => Err(SetupError::new("weights refused")),
            Some(w) if w.starts_with("wait:") => {
                let ms: u64 = w[5..].parse().unwrap_or(0);
                std::thread::sleep(Duration::from_millis(ms));
                Ok(Probe { unhealthy: false })
            }
            Some("unhealthy") => Ok(Probe { unhealthy: true }),
            _ => Ok(Probe { unhealthy: false }),
        }
    }

    fn validate(&self, input: Input) -> Result<Input, InputError> {
        if input.text == "reject" {
            return Err(InputError::new("text", "the probe refuses this text"));
        }
        if let Some(f) = &input.file {
            let bytes = std::fs::read(f.as_path()).unwrap_or_default();
            if bytes == b"bad" {
                return Err(InputError::new("file", "not a file the probe accepts"));
            }
        }
        Ok(input)
    }

    fn predict(&self, input: Input, ctx: &PredictContext) -> Result<Output, PredictError> {
        ctx.log("probe start");
        let end = Instant::now() + Duration::from_secs_f64(input.delay);
        while Instant::now() < end {
            ctx.check_cancelled()?;
            std::thread::sleep(Duration::from_millis(2));
        }
        if input.panic {
            panic!("probe panicked on purpose");
        }
        if input.fail {
            return Err(PredictError::failed("probe failed on purpose"));
        }
        ctx.emit(input.text.clone());
        ctx.metric("chars", input.text.len());
        let file_bytes = input
            .file
            .as_ref()
            .map(|f| std::fs::metadata(f.as_path()).map(|m| m.len()).unwrap_or(0));
        let file = if input.write_file {
            let p = ctx.scratch_dir().join("echo.txt");
            std::fs::write(&p, &input.text).map_err(PredictError::failed)?;
            Some(Path::new(p))
        } else {
            None
        };
        ctx.log("probe end");
        Ok(Output {
            text: input.text,
            file_bytes,
            file,
        })
    }

    fn healthcheck(&self) -> Result<(), String> {
        if self.unhealthy {
            Err("probe is unwell".into())
        } else {
            Ok(())
        }
    }
}

pub fn def() -> PredictorDef {
    PredictorDef::of::<Probe>("probe")
}

pub fn service(weights: Option<&str>, slots: usize) -> Arc<PredictionService> {
    let mut config = ServiceConfig::from_env(slots);
    config.weights = weights.map(str::to_owned);
    PredictionService::new(def(), config).expect("service")
}

pub async fn ready_service(slots: usize) -> Arc<PredictionService> {
    ready_service_with(slots, |_| {}).await
}

/// A ready service whose config `tune` adjusts first.
pub async fn ready_service_with(
    slots: usize,
    tune: impl FnOnce(&mut ServiceConfig),
) -> Arc<PredictionService> {
    let mut config = ServiceConfig::from_env(slots);
    tune(&mut config);
    let s = PredictionService::new(def(), config).expect("service");
    s.run_setup().await;
    assert!(s.is_ready());
    s
}
