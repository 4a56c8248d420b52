//! Type erasure: a [`Predictor`] behind an object the service can hold, and the table of
//! predictors a binary offers.

use crate::predictor::{
    InputError, PredictContext, PredictError, Predictor, SetupContext, SetupError,
};
use crate::schema::PredictorSchema;
use crate::validate::FieldError;
use serde_json::Value;
use std::any::Any;
use std::sync::Arc;

/// Input that passed the schema and the predictor's own checks, typed but erased.
pub type ValidInput = Box<dyn Any + Send>;

/// A set-up predictor, erased.
pub trait ErasedPredictor: Send + Sync {
    /// Deserialises and runs `Predictor::validate`; errors name the field.
    fn check(&self, input: Value) -> Result<ValidInput, Vec<FieldError>>;
    fn predict(&self, input: ValidInput, ctx: &PredictContext) -> Result<Value, PredictError>;
    fn healthcheck(&self) -> Result<(), String>;
}

struct Erased<P>(P);

impl<P: Predictor> ErasedPredictor for Erased<P> {
    fn check(&self, input: Value) -> Result<ValidInput, Vec<FieldError>> {
        let typed: P::Input = serde_path_to_error::deserialize(input).map_err(|e| {
            let field = e
                .path()
                .iter()
                .next()
                .map(|s| s.to_string())
                .unwrap_or_else(|| "__root__".into());
            vec![FieldError::value(field, e.into_inner().to_string())]
        })?;
        let valid = self
            .0
            .validate(typed)
            .map_err(|InputError { field, msg }| vec![FieldError::value(field, msg)])?;
        Ok(Box::new(valid))
    }

    fn predict(&self, input: ValidInput, ctx: &PredictContext) -> Result<Value, PredictError> {
        let valid = input
            .downcast::<P::Valid>()
            .map_err(|_| PredictError::failed("internal error: input of the wrong type"))?;
        let output = self.0.predict(*valid, ctx)?;
        serde_json::to_value(output)
            .map_err(|e| PredictError::failed(format!("output could not be serialised: {e}")))
    }

    fn healthcheck(&self) -> Result<(), String> {
        self.0.healthcheck()
    }
}

type SetupFn = dyn Fn(&SetupContext) -> Result<Arc<dyn ErasedPredictor>, SetupError> + Send + Sync;

/// Everything the runtime knows about one predictor before it is set up.
#[derive(Clone)]
pub struct PredictorDef {
    pub name: String,
    pub schema: Arc<PredictorSchema>,
    pub streaming: bool,
    setup: Arc<SetupFn>,
}

impl PredictorDef {
    pub fn of<P: Predictor>(name: &str) -> Self {
        Self {
            name: name.to_string(),
            schema: Arc::new(PredictorSchema::generate::<P::Input, P::Output>(
                P::STREAMING,
            )),
            streaming: P::STREAMING,
            setup: Arc::new(|ctx| {
                P::setup(ctx).map(|p| Arc::new(Erased(p)) as Arc<dyn ErasedPredictor>)
            }),
        }
    }

    pub fn setup(&self, ctx: &SetupContext) -> Result<Arc<dyn ErasedPredictor>, SetupError> {
        (self.setup)(ctx)
    }
}

/// The predictors a binary serves, by name.
#[derive(Clone, Default)]
pub struct Registry {
    defs: Vec<PredictorDef>,
}

impl Registry {
    pub fn new(defs: Vec<PredictorDef>) -> Self {
        Self { defs }
    }

    pub fn get(&self, name: &str) -> Option<&PredictorDef> {
        self.defs.iter().find(|d| d.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.defs.iter().map(|d| d.name.as_str()).collect()
    }

    /// The only predictor, when there is exactly one.
    pub fn single(&self) -> Option<&PredictorDef> {
        match self.defs.as_slice() {
            [one] => Some(one),
            _ => None,
        }
    }
}
