//! `cog.yaml`: the parts the runtime reads (which predictor, how many at once).

use serde::Deserialize;
use std::path::Path;

#[derive(Debug, Clone, Default, Deserialize)]
pub struct CogYaml {
    /// The predictor to serve; for cogrs a predictor name such as `smollm3`.
    pub predict: Option<String>,
    #[serde(default)]
    pub concurrency: Concurrency,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Concurrency {
    #[serde(default = "one")]
    pub max: usize,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self { max: 1 }
    }
}

fn one() -> usize {
    1
}

impl CogYaml {
    /// Reads `cog.yaml` from `dir`; a missing file means the defaults.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let path = dir.join("cog.yaml");
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}
