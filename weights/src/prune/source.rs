//! Pruning inside `cogrs weights build`: a [`TensorSource`] that prunes each tensor as the graph
//! builder reads it (so no second copy of the model is held), before quantisation, and collects one
//! report per tensor read: pruned, or skipped with the filter map's reason.
//!
//! Gradual pruning here runs its N steps on each tensor in turn with no hook between steps (the
//! build has no fine-tuning to run there); magnitude pruning is per tensor, so this reaches the same
//! weights as stepping all tensors together would.

use super::{FilterMap, Method, Summary, TensorReport};
use crate::checkpoint::{Tensor, TensorSource};
use crate::Error;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// `--prune` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PruneMethod {
    /// Keep the top-K weights of each allowed tensor by |w|.
    Magnitude,
    /// Magnitude, sparsity raised over `gradual_steps` on the cubic schedule.
    Gradual,
    /// Zero whole output rows ranked by L2 norm (shapes unchanged unless `compact`).
    Structured,
}

impl PruneMethod {
    pub fn name(self) -> &'static str {
        match self {
            PruneMethod::Magnitude => "magnitude",
            PruneMethod::Gradual => "gradual",
            PruneMethod::Structured => "structured",
        }
    }
}

/// The pruning part of a build request.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneRequest {
    pub method: PruneMethod,
    /// Target sparsity per allowed tensor, in [0, 1].
    pub sparsity: f64,
    /// Gradual only (at least 1).
    pub gradual_steps: usize,
    /// Structured only: drop dead gated-MLP channels (architectures that support it: Gemma 3).
    pub compact: bool,
    /// A filter map file; `None` takes the architecture's built-in map.
    pub filter_map: Option<PathBuf>,
}

impl PruneRequest {
    /// Checks the numbers and loads the filter map (`builtin`: the architecture's shipped map).
    /// Returns the map and where it came from.
    pub fn resolve(&self, builtin: Option<&str>) -> Result<(FilterMap, String), Error> {
        if !(0.0..=1.0).contains(&self.sparsity) || self.sparsity.is_nan() {
            return Err(Error::Unsupported(format!(
                "--sparsity {} is outside [0, 1]",
                self.sparsity
            )));
        }
        if self.method == PruneMethod::Gradual && self.gradual_steps == 0 {
            return Err(Error::Unsupported(
                "--gradual-steps must be at least 1".into(),
            ));
        }
        if self.compact && self.method != PruneMethod::Structured {
            return Err(Error::Unsupported(
                "--compact applies to --prune structured only".into(),
            ));
        }
        match (&self.filter_map, builtin) {
            (Some(p), _) => Ok((FilterMap::load(p)?, p.display().to_string())),
            (None, Some(name)) => Ok((
                FilterMap::builtin(name)
                    .ok_or_else(|| Error::Internal(format!("no built-in filter map {name}")))?,
                format!("builtin:{name}"),
            )),
            (None, None) => Err(Error::Unsupported(
                "this architecture has no built-in filter map: pass --filter-map".into(),
            )),
        }
    }
}

pub struct PrunedSource<'a> {
    inner: &'a dyn TensorSource,
    map: &'a FilterMap,
    req: &'a PruneRequest,
    reports: RefCell<Vec<TensorReport>>,
    seen: RefCell<BTreeSet<String>>,
}

impl<'a> PrunedSource<'a> {
    pub fn new(inner: &'a dyn TensorSource, map: &'a FilterMap, req: &'a PruneRequest) -> Self {
        PrunedSource {
            inner,
            map,
            req,
            reports: RefCell::new(Vec::new()),
            seen: RefCell::new(BTreeSet::new()),
        }
    }

    /// One report per tensor read, in the order the builder read them.
    pub fn into_reports(self) -> Vec<TensorReport> {
        self.reports.into_inner()
    }
}

impl TensorSource for PrunedSource<'_> {
    fn get(&self, name: &str) -> Result<Tensor, Error> {
        let t = self.inner.get(name)?;
        let mut one = vec![(name.to_string(), t)];
        let s = self.req.sparsity;
        let reports = match self.req.method {
            PruneMethod::Magnitude => {
                super::prune(&mut one, self.map, Method::Magnitude { sparsity: s })
            }
            PruneMethod::Structured => {
                super::prune(&mut one, self.map, Method::Structured { sparsity: s })
            }
            PruneMethod::Gradual => {
                super::gradual(&mut one, self.map, s, self.req.gradual_steps, |_, _, _| {
                    Ok(())
                })
            }
        }
        .map_err(|e| Error::Unsupported(format!("pruning {name}: {e}")))?;
        // Pruning is deterministic, so a tensor read twice is pruned the same way; report it once.
        if self.seen.borrow_mut().insert(name.to_string()) {
            self.reports.borrow_mut().extend(reports);
        }
        Ok(one.pop().expect("one tensor in, one out").1)
    }
    fn contains(&self, name: &str) -> bool {
        self.inner.contains(name)
    }
    fn file_of(&self, name: &str) -> PathBuf {
        self.inner.file_of(name)
    }
}

/// `prune_report.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport<C: Serialize> {
    pub method: &'static str,
    pub sparsity: f64,
    pub gradual_steps: Option<usize>,
    pub compact: bool,
    /// The filter map's `model` line and where it came from.
    pub filter_map: String,
    pub filter_map_source: String,
    pub summary: Summary,
    /// Every tensor the build read, pruned or skipped (with the reason).
    pub tensors: Vec<TensorReport>,
    /// Per-layer MLP widths after compaction (empty without `compact`).
    pub compaction: Vec<C>,
}

impl<C: Serialize> PruneReport<C> {
    pub fn new(
        req: &PruneRequest,
        map: &FilterMap,
        source: &str,
        tensors: Vec<TensorReport>,
        compaction: Vec<C>,
    ) -> Self {
        PruneReport {
            method: req.method.name(),
            sparsity: req.sparsity,
            gradual_steps: (req.method == PruneMethod::Gradual).then_some(req.gradual_steps),
            compact: req.compact,
            filter_map: map.model.clone(),
            filter_map_source: source.to_string(),
            summary: super::summarize(&tensors),
            tensors,
            compaction,
        }
    }

    /// The manifest's summary of this report, written to `file` in the folder.
    pub fn record(&self, file: &Path) -> crate::format::PruningRecord {
        crate::format::PruningRecord {
            method: self.method.into(),
            sparsity: self.sparsity,
            gradual_steps: self.gradual_steps,
            compact: self.compact,
            filter_map: self.filter_map.clone(),
            filter_map_source: self.filter_map_source.clone(),
            report: file.display().to_string(),
            pruned_tensors: self.summary.pruned_tensors,
            skipped_tensors: self.summary.skipped_tensors,
            sparsity_of_pruned: self.summary.sparsity_of_pruned,
        }
    }
}
