//! The smoke test's arithmetic: an optimised checkpoint's logits against the unoptimised
//! model's, position by position, teacher-forced over the same tokens. Top-1 agreement (how often
//! the two argmaxes agree), KL(reference ‖ optimised) of the next-token distributions (mean and
//! worst), and both perplexities. Running the graphs is the caller's (it needs ONNX Runtime,
//! which this crate does not link): `cog-predictors` runs it after `cogrs weights build`, and the
//! Gemma-3-270M perplexity example uses it for its table.

use serde::{Deserialize, Serialize};

/// Accumulates [`Compare::add`] rows.
#[derive(Debug, Default, Clone)]
pub struct Compare {
    positions: usize,
    agree: usize,
    kl_sum: f64,
    kl_max: f64,
    scored: usize,
    nll_ref: f64,
    nll_opt: f64,
}

/// What [`Compare`] measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub positions: usize,
    pub top1_agreement: f64,
    /// Mean over positions of KL(reference ‖ optimised), nats.
    pub mean_kl: f64,
    pub max_kl: f64,
    /// Perplexity of the teacher-forced text under each model (positions with a next token).
    pub perplexity_reference: f64,
    pub perplexity_optimised: f64,
}

/// log-softmax of a logits row, in f64.
pub fn log_softmax(row: &[f32]) -> Vec<f64> {
    let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    row.iter().map(|&x| x as f64 - lse).collect()
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

impl Compare {
    /// One position: the two logits rows, and the token that follows (None at the last position).
    pub fn add(&mut self, reference: &[f32], optimised: &[f32], next: Option<u32>) {
        assert_eq!(reference.len(), optimised.len(), "vocabulary sizes differ");
        let (p, q) = (log_softmax(reference), log_softmax(optimised));
        let kl: f64 = p
            .iter()
            .zip(&q)
            .map(|(&lp, &lq)| lp.exp() * (lp - lq))
            .sum::<f64>()
            .max(0.0);
        self.positions += 1;
        self.agree += (argmax(reference) == argmax(optimised)) as usize;
        self.kl_sum += kl;
        self.kl_max = self.kl_max.max(kl);
        if let Some(t) = next {
            self.scored += 1;
            self.nll_ref -= p[t as usize];
            self.nll_opt -= q[t as usize];
        }
    }

    pub fn measured(&self) -> Measured {
        let n = self.positions.max(1) as f64;
        let s = self.scored.max(1) as f64;
        Measured {
            positions: self.positions,
            top1_agreement: self.agree as f64 / n,
            mean_kl: self.kl_sum / n,
            max_kl: self.kl_max,
            perplexity_reference: (self.nll_ref / s).exp(),
            perplexity_optimised: (self.nll_opt / s).exp(),
        }
    }
}

/// The gate: a build whose smoke test measures below these fails.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Thresholds {
    pub min_top1_agreement: f64,
    pub max_mean_kl: f64,
}

impl Thresholds {
    /// Whether `m` passes; the error names every bound it misses.
    pub fn check(&self, m: &Measured) -> Result<(), String> {
        let mut why = Vec::new();
        if m.top1_agreement.is_nan() || m.top1_agreement < self.min_top1_agreement {
            why.push(format!(
                "top-1 agreement {:.4} < {}",
                m.top1_agreement, self.min_top1_agreement
            ));
        }
        if m.mean_kl.is_nan() || m.mean_kl > self.max_mean_kl {
            why.push(format!(
                "mean KL {:.4} nats > {}",
                m.mean_kl, self.max_mean_kl
            ));
        }
        match why.is_empty() {
            true => Ok(()),
            false => Err(why.join("; ")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// KL((½, ½) ‖ (¾, ¼)) = ½ ln(2/3) + ½ ln 2 = 0.143841…; the argmaxes differ (a tie resolves to
    /// the first index, 0, which the other row also picks: agreement 1); perplexity from the next
    /// token's probability.
    #[test]
    fn two_class_numbers() {
        let mut c = Compare::default();
        c.add(&[0.0, 0.0], &[3f32.ln(), 0.0], Some(1));
        let m = c.measured();
        assert!((m.mean_kl - 0.143_841_036).abs() < 1e-6, "{}", m.mean_kl);
        assert_eq!(m.top1_agreement, 1.0);
        assert!((m.perplexity_reference - 2.0).abs() < 1e-9);
        assert!((m.perplexity_optimised - 4.0).abs() < 1e-5);
        c.add(&[1.0, 0.0], &[0.0, 1.0], None);
        let m = c.measured();
        assert_eq!(m.positions, 2);
        assert_eq!(m.top1_agreement, 0.5);
        let t = Thresholds {
            min_top1_agreement: 0.9,
            max_mean_kl: 0.1,
        };
        let why = t.check(&m).unwrap_err();
        assert!(why.contains("top-1 agreement 0.5000 < 0.9") && why.contains("mean KL"));
        assert!(Thresholds {
            min_top1_agreement: 0.5,
            max_mean_kl: 1.0
        }
        .check(&m)
        .is_ok());
    }
}
