//! The declarative filter map: which tensors a pruning pass may touch, decided on tensor names alone.
//!
//! A map is a JSON file per model (`weights/recipes/<model>.prune.json`) with `allow` and `deny` rule
//! lists; each rule is a glob over the full tensor name (`*` any run of characters, dots included;
//! `?` one character) and a `why`. A tensor is prunable only when an allow rule matches and no deny
//! rule does: deny wins, and a name no rule mentions is left alone. The rule that decided is kept so
//! that the report can say why a tensor was or was not pruned.

use crate::Error;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub pattern: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterMap {
    /// Which checkpoints the map is written for (free text, shown in reports).
    pub model: String,
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

/// What the map says about one tensor name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    Allowed {
        pattern: String,
    },
    Denied {
        pattern: String,
        why: String,
    },
    /// No allow rule matches: outside the map, never touched.
    NotInMap,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allowed { .. })
    }
}

/// The maps in weights/recipes/, compiled in so that an installed `cogrs` needs no source tree.
const BUILTIN: &[(&str, &str)] = &[("gemma3", include_str!("../../recipes/gemma3.prune.json"))];

impl FilterMap {
    pub fn load(path: &Path) -> Result<FilterMap, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text, path)
    }

    /// A map shipped with the crate, by model name (`gemma3`); `None` for an unknown name.
    pub fn builtin(name: &str) -> Option<FilterMap> {
        let (_, text) = BUILTIN.iter().find(|(n, _)| *n == name)?;
        let path = Path::new("weights/recipes").join(format!("{name}.prune.json"));
        Some(Self::parse(text, &path).expect("built-in filter maps are valid (tested)"))
    }

    fn parse(text: &str, path: &Path) -> Result<FilterMap, Error> {
        let map: FilterMap = serde_json::from_str(text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        map.check().map_err(|msg| Error::Config {
            path: path.to_path_buf(),
            msg,
        })?;
        Ok(map)
    }

    /// A map that allows nothing is almost certainly a mistake (every tensor would be skipped), as is
    /// an empty pattern.
    fn check(&self) -> Result<(), String> {
        if self.allow.is_empty() {
            return Err("filter map has no allow rules: it would prune nothing".into());
        }
        for r in self.allow.iter().chain(&self.deny) {
            if r.pattern.is_empty() {
                return Err("filter map has an empty pattern".into());
            }
        }
        Ok(())
    }

    pub fn decide(&self, name: &str) -> Decision {
        if let Some(r) = self.deny.iter().find(|r| glob_match(&r.pattern, name)) {
            return Decision::Denied {
                pattern: r.pattern.clone(),
                why: r.why.clone(),
            };
        }
        match self.allow.iter().find(|r| glob_match(&r.pattern, name)) {
            Some(r) => Decision::Allowed {
                pattern: r.pattern.clone(),
            },
            None => Decision::NotInMap,
        }
    }
}

/// Whole-string glob match: `*` matches any run of characters (dots included), `?` exactly one.
/// Iterative with single backtracking point, so no pattern is exponential.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            // Let the last `*` swallow one more character and retry.
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn glob() {
        assert!(glob_match(
            "*.q_proj.weight",
            "model.layers.0.self_attn.q_proj.weight"
        ));
        assert!(!glob_match(
            "*.q_proj.weight",
            "model.layers.0.self_attn.q_proj.bias"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
        assert!(!glob_match("lm_head*", "model.lm_head.weight"));
    }
}
