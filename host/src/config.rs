//! Configuration files (YAML). Unknown keys and wrong types are errors that name the file,
//! line and column.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::engine::Experiment;
use crate::policy::{Budget, PolicyLimits};
use crate::store::SearchSpec;

/// Why a configuration file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid { path: PathBuf, line: usize, column: usize, message: String },
    #[error("{path}: {message}")]
    Semantic { path: PathBuf, message: String },
}

/// Reads and deserialises a YAML file.
pub fn load_yaml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_owned(), source })?;
    parse_yaml(&text, path)
}

/// Deserialises YAML text; `path` names it in errors.
pub fn parse_yaml<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    serde_yaml::from_str(text).map_err(|e| {
        let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
        let message = e.to_string();
        // serde_yaml appends " at line L column C"; the prefix already says where.
        let message = match message.rfind(" at line ") {
            Some(cut) => message[..cut].to_owned(),
            None => message,
        };
        ConfigError::Invalid { path: path.to_owned(), line, column, message }
    })
}

/// Budget and batch settings of a search.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct SearchSettings {
    /// Kernel scores a run may compute.
    pub budget: u32,
    /// Trainings a run may run (the k of KNAS's top-k).
    pub top_k: u32,
    /// Candidates one proposal may hold.
    pub max_batch: u32,
}

impl Default for SearchSettings {
    fn default() -> SearchSettings {
        SearchSettings { budget: 100, top_k: 3, max_batch: 16 }
    }
}

impl SearchSettings {
    /// The run's full search specification with these settings.
    pub fn spec(&self, params: serde_json::Value, limits: PolicyLimits) -> SearchSpec {
        SearchSpec { budget: Budget { scores: self.budget, trainings: self.top_k }, max_batch: self.max_batch, params, limits }
    }
}

/// A search run described in a file: `knas search --config run.yaml`.
///
/// ```yaml
/// experiment: { dataset: mnist5k, channels: 16, cells: 5, seed: 0 }
/// search: { budget: 200, top-k: 5, max-batch: 16 }
/// params: { population: 10, sample: 3 }   # the policy's own parameters
/// limits: { call-timeout-ms: 2000, memory-mib: 64 }
/// ```
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct RunConfig {
    pub experiment: Experiment,
    pub search: SearchSettings,
    /// The policy's parameters, handed to it as JSON.
    pub params: Option<serde_json::Value>,
    pub limits: PolicyLimits,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_configs_parse_and_errors_point_at_the_line() {
        let text = "experiment:\n  channels: 8\nsearch:\n  budget: 20\nparams:\n  population: 4\n";
        let config: RunConfig = parse_yaml(text, Path::new("run.yaml")).unwrap();
        assert_eq!(config.experiment.channels, 8);
        assert_eq!(config.search, SearchSettings { budget: 20, ..SearchSettings::default() });
        assert_eq!(config.params, Some(serde_json::json!({"population": 4})));

        let err = parse_yaml::<RunConfig>("search:\n  budget: 20\n  topk: 3\n", Path::new("run.yaml")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("run.yaml:3:3: search: unknown field `topk`"), "{text}");

        let err = parse_yaml::<RunConfig>("experiment:\n  channels: many\n", Path::new("run.yaml")).unwrap_err();
        assert!(err.to_string().starts_with("run.yaml:2:13: experiment.channels: invalid type"), "{err}");
    }
}
