//! Pruning of linear weights before quantisation, on f32 tensors by name, gated by a per-model
//! [`FilterMap`]. Three methods, as the Gemma 3 deployment had them:
//! - magnitude: keep the top-K weights of a tensor by |w|, zero the rest ([`magnitude`]);
//! - gradual magnitude: the same, sparsity raised over N steps on a cubic schedule, with a hook
//!   between steps ([`gradual`]);
//! - structured ("safe mode"): zero whole output rows ranked by L2 norm, shapes unchanged
//!   ([`structured`]), and [`structured::compact_mlp`] to drop dead gated-MLP channels.
//!
//! Every call reports, per tensor, the sparsity reached, or that the tensor was skipped and why: a
//! tensor the map does not allow is never touched.

pub mod filter;
pub mod magnitude;
pub mod source;
pub mod structured;

pub use filter::{Decision, FilterMap};

use crate::checkpoint::Tensor;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Method {
    Magnitude { sparsity: f64 },
    Structured { sparsity: f64 },
}

impl Method {
    fn sparsity(self) -> f64 {
        match self {
            Method::Magnitude { sparsity } | Method::Structured { sparsity } => sparsity,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Method::Magnitude { .. } => "magnitude",
            Method::Structured { .. } => "structured",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PruneError {
    #[error("sparsity {0} is outside [0, 1]")]
    InvalidSparsity(f64),
    #[error("gradual pruning needs at least one step")]
    NoSteps,
    #[error("gradual pruning: the hook after step {step} failed: {message}")]
    Hook { step: usize, message: String },
}

/// What a pass did to one tensor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub method: &'static str,
    /// The sparsity asked for.
    pub target: f64,
    /// Fraction of exact zeros before and after the pass.
    pub sparsity_before: f64,
    pub sparsity: f64,
    /// Weights this pass set to zero.
    pub zeroed: usize,
    /// Structured only: how many output rows were zeroed.
    pub rows_pruned: Option<usize>,
    pub decision: Decision,
    /// Set when the tensor was left as it was: the map's verdict, or why an allowed tensor could
    /// not be pruned.
    pub skipped: Option<String>,
}

/// Totals over a pass, for build logs and benchmark tables.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub tensors: usize,
    /// Tensors the pass changed or could have changed (allowed and prunable).
    pub pruned_tensors: usize,
    pub skipped_tensors: usize,
    /// Weights in the pruned tensors, and how many of them are zero after the pass.
    pub pruned_params: usize,
    pub pruned_zeros: usize,
    /// `pruned_zeros / pruned_params`.
    pub sparsity_of_pruned: f64,
    /// Weights in all tensors, and the fraction of them that the pass set to zero.
    pub total_params: usize,
    pub zeroed_fraction_of_total: f64,
}

pub fn summarize(reports: &[TensorReport]) -> Summary {
    let numel = |r: &TensorReport| r.shape.iter().product::<usize>();
    let pruned: Vec<&TensorReport> = reports.iter().filter(|r| r.skipped.is_none()).collect();
    let pruned_params: usize = pruned.iter().map(|r| numel(r)).sum();
    let pruned_zeros: usize = pruned
        .iter()
        .map(|r| (r.sparsity * numel(r) as f64).round() as usize)
        .sum();
    let total_params: usize = reports.iter().map(numel).sum();
    let zeroed: usize = reports.iter().map(|r| r.zeroed).sum();
    let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
    Summary {
        tensors: reports.len(),
        pruned_tensors: pruned.len(),
        skipped_tensors: reports.len() - pruned.len(),
        pruned_params,
        pruned_zeros,
        sparsity_of_pruned: ratio(pruned_zeros, pruned_params),
        total_params,
        zeroed_fraction_of_total: ratio(zeroed, total_params),
    }
}

/// Prunes one named tensor if the map allows it.
pub fn prune_tensor(
    name: &str,
    tensor: &mut Tensor,
    map: &FilterMap,
    method: Method,
) -> Result<TensorReport, PruneError> {
    let target = method.sparsity();
    if !(0.0..=1.0).contains(&target) {
        return Err(PruneError::InvalidSparsity(target));
    }
    let before = magnitude::sparsity_of(&tensor.data);
    let mut report = TensorReport {
        name: name.to_string(),
        shape: tensor.shape.clone(),
        method: method.name(),
        target,
        sparsity_before: before,
        sparsity: before,
        zeroed: 0,
        rows_pruned: None,
        decision: map.decide(name),
        skipped: None,
    };
    report.skipped = match &report.decision {
        Decision::NotInMap => Some("not in the filter map (no allow rule matches)".into()),
        Decision::Denied { pattern, why } => Some(format!("denied by {pattern:?}: {why}")),
        Decision::Allowed { .. } if tensor.data.iter().any(|w| !w.is_finite()) => {
            Some("non-finite values (NaN or infinity) have no magnitude rank".into())
        }
        Decision::Allowed { .. } => match (method, &tensor.shape[..]) {
            (Method::Structured { .. }, s) if s.len() != 2 => Some(format!(
                "structured pruning needs a 2-D [out, in] weight, got {s:?}"
            )),
            _ => None,
        },
    };
    if report.skipped.is_some() {
        return Ok(report);
    }
    match method {
        Method::Magnitude { sparsity } => {
            report.zeroed = magnitude::magnitude(&mut tensor.data, sparsity);
        }
        Method::Structured { sparsity } => {
            let (rows, cols) = (tensor.shape[0], tensor.shape[1]);
            let nonzero_before = tensor.data.iter().filter(|w| **w != 0.0).count();
            let pruned = structured::prune_rows(&mut tensor.data, rows, cols, sparsity);
            report.rows_pruned = Some(pruned.len());
            report.zeroed = nonzero_before - tensor.data.iter().filter(|w| **w != 0.0).count();
        }
    }
    report.sparsity = magnitude::sparsity_of(&tensor.data);
    Ok(report)
}

/// Prunes every tensor the map allows; one report per tensor, in order.
pub fn prune(
    tensors: &mut [(String, Tensor)],
    map: &FilterMap,
    method: Method,
) -> Result<Vec<TensorReport>, PruneError> {
    tensors
        .iter_mut()
        .map(|(name, t)| prune_tensor(name, t, map, method))
        .collect()
}

/// Where a gradual run stands when its hook is called.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradualStep {
    /// 1-based step just applied.
    pub step: usize,
    pub steps: usize,
    /// The schedule's sparsity at this step.
    pub sparsity: f64,
}

/// Gradual magnitude pruning: for t = 1..=N, magnitude-prunes every allowed tensor to
/// [`magnitude::cubic_schedule`]`(final, t, N)`, calling `hook` after each step but the last with
/// the tensors (to fine-tune or re-calibrate them) and that step's reports. The returned reports
/// cover the whole run: sparsity before step 1, after step N, and every weight zeroed on the way.
pub fn gradual<H>(
    tensors: &mut [(String, Tensor)],
    map: &FilterMap,
    final_sparsity: f64,
    steps: usize,
    mut hook: H,
) -> Result<Vec<TensorReport>, PruneError>
where
    H: FnMut(&GradualStep, &mut [(String, Tensor)], &[TensorReport]) -> Result<(), String>,
{
    if !(0.0..=1.0).contains(&final_sparsity) {
        return Err(PruneError::InvalidSparsity(final_sparsity));
    }
    if steps == 0 {
        return Err(PruneError::NoSteps);
    }
    let mut total: Option<Vec<TensorReport>> = None;
    for step in 1..=steps {
        let sparsity = magnitude::cubic_schedule(final_sparsity, step, steps);
        let reports = prune(tensors, map, Method::Magnitude { sparsity })?;
        total = Some(match total {
            None => reports.clone(),
            Some(mut acc) => {
                for (a, r) in acc.iter_mut().zip(&reports) {
                    a.zeroed += r.zeroed;
                    a.sparsity = r.sparsity;
                }
                acc
            }
        });
        if step < steps {
            let info = GradualStep {
                step,
                steps,
                sparsity,
            };
            hook(&info, tensors, &reports).map_err(|message| PruneError::Hook { step, message })?;
        }
    }
    let mut total = total.expect("at least one step ran");
    for r in &mut total {
        r.method = "gradual";
        r.target = final_sparsity;
    }
    Ok(total)
}
