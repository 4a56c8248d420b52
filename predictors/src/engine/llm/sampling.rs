//! Choosing the next token from logits: greedy at temperature 0, otherwise temperature, top-k and top-p
//! (nucleus) with a seeded RNG, so the same seed and logits give the same token. The seed used is kept so
//! it can be reported (a random one is drawn when none is given).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What the caller asks for; `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingConfig {
    pub temperature: f32,
    /// Keep only the `k` most likely tokens (None or 0: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of tokens whose probability adds up to `p` (None or >= 1: all).
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: None,
        }
    }
}

/// The strategy, decided once per request from the config.
#[derive(Debug, Clone, PartialEq)]
pub enum Sampling {
    Greedy,
    Random {
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
    },
}

impl Sampling {
    pub fn from_config(c: &SamplingConfig) -> Sampling {
        let top_k = c.top_k.filter(|&k| k > 0);
        // top_k = 1 is greedy whatever the temperature; so is a temperature of 0 (or a NaN).
        if c.temperature.is_nan() || c.temperature <= 0.0 || top_k == Some(1) {
            return Sampling::Greedy;
        }
        let top_p = c.top_p.filter(|&p| p > 0.0 && p < 1.0);
        Sampling::Random {
            temperature: c.temperature,
            top_k,
            top_p,
        }
    }
}

pub struct Sampler {
    sampling: Sampling,
    rng: StdRng,
    seed: u64,
    /// Reused between tokens: (token id, weight).
    scratch: Vec<(u32, f32)>,
}

impl Sampler {
    pub fn new(config: &SamplingConfig) -> Sampler {
        // A u32 seed when we choose it: it survives a JSON round trip through any client exactly.
        let seed = config.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
        Sampler {
            sampling: Sampling::from_config(config),
            rng: StdRng::seed_from_u64(seed),
            seed,
            scratch: Vec::new(),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn sampling(&self) -> &Sampling {
        &self.sampling
    }

    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        match self.sampling.clone() {
            Sampling::Greedy => argmax(logits),
            Sampling::Random {
                temperature,
                top_k,
                top_p,
            } => self.sample_random(logits, temperature, top_k, top_p),
        }
    }

    fn sample_random(
        &mut self,
        logits: &[f32],
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
    ) -> u32 {
        let c = &mut self.scratch;
        c.clear();
        c.extend(
            logits
                .iter()
                .enumerate()
                .filter(|(_, l)| !l.is_nan())
                .map(|(i, &l)| (i as u32, l / temperature)),
        );
        if c.is_empty() {
            return 0;
        }
        let by_logit_desc =
            |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
        if let Some(k) = top_k.filter(|&k| k < c.len()) {
            c.select_nth_unstable_by(k - 1, by_logit_desc);
            c.truncate(k);
        }
        // Softmax over the survivors, max-subtracted for stability.
        let max = c.iter().map(|x| x.1).fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for x in c.iter_mut() {
            x.1 = (x.1 - max).exp();
            sum += x.1;
        }
        if let Some(p) = top_p {
            // Sorted by probability (then id, so ties are deterministic); keep tokens until their mass reaches p.
            c.sort_unstable_by(by_logit_desc);
            let target = p * sum;
            let mut acc = 0.0;
            let mut keep = c.len();
            for (i, x) in c.iter().enumerate() {
                acc += x.1;
                if acc >= target {
                    keep = i + 1;
                    break;
                }
            }
            c.truncate(keep);
            sum = acc.min(sum);
        } else {
            // The draw below walks the candidates in order, so the order must not depend on select_nth's internals.
            c.sort_unstable_by_key(|x| x.0);
        }
        let mut r = self.rng.random::<f32>() * sum;
        for x in c.iter() {
            r -= x.1;
            if r <= 0.0 {
                return x.0;
            }
        }
        c.last().map(|x| x.0).unwrap_or(0)
    }
}

/// Index of the largest logit (the first one on ties, like torch.argmax).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] || logits[best].is_nan() {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(t: f32, k: Option<usize>, p: Option<f32>, seed: u64) -> SamplingConfig {
        SamplingConfig {
            temperature: t,
            top_k: k,
            top_p: p,
            seed: Some(seed),
        }
    }

    #[test]
    fn greedy_at_zero_temperature_and_top_k_one() {
        let logits = [0.1, 3.0, 2.9, -1.0];
        assert_eq!(Sampler::new(&cfg(0.0, None, None, 1)).sample(&logits), 1);
        assert_eq!(Sampler::new(&cfg(1.5, Some(1), None, 1)).sample(&logits), 1);
        assert_eq!(argmax(&[1.0, 1.0]), 0);
    }

    #[test]
    fn same_seed_same_tokens_other_seed_differs() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&cfg(1.0, None, None, seed));
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_and_top_p_restrict_the_candidates() {
        // Probabilities about 0.64, 0.24, 0.09, 0.03 at temperature 1.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(&cfg(1.0, Some(2), None, 3));
        let seen: std::collections::BTreeSet<u32> = (0..500).map(|_| s.sample(&logits)).collect();
        assert_eq!(seen, [0, 1].into());
        let mut s = Sampler::new(&cfg(1.0, None, Some(0.7), 3));
        let seen: std::collections::BTreeSet<u32> = (0..500).map(|_| s.sample(&logits)).collect();
        assert_eq!(
            seen,
            [0, 1].into(),
            "0.64 < 0.7 so the second token is needed, the third is not"
        );
        let mut s = Sampler::new(&cfg(1.0, None, None, 3));
        let seen: std::collections::BTreeSet<u32> = (0..2000).map(|_| s.sample(&logits)).collect();
        assert_eq!(seen, [0, 1, 2, 3].into());
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0f32, (3.0f32).ln()]; // probabilities 0.25 / 0.75
        let mut s = Sampler::new(&cfg(1.0, None, None, 11));
        let ones = (0..20000).filter(|_| s.sample(&logits) == 1).count() as f64 / 20000.0;
        assert!((ones - 0.75).abs() < 0.02, "{ones}");
    }

    #[test]
    fn a_seed_is_chosen_and_reported() {
        let s = Sampler::new(&SamplingConfig {
            temperature: 1.0,
            ..Default::default()
        });
        assert!(s.seed() <= u32::MAX as u64);
    }
}
