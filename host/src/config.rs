//! Configuration files (YAML). Unknown keys and wrong types are errors that name the file,
//! line and column.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::engine::DeviceChoice;
use crate::run::{Budget, Experiment, PolicyLimits, SearchSpec};
use crate::table::BenchmarkTable;

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
    /// Training-free scores a run may compute: a budget of scores only (trainings are
    /// `top_k`). Its key in YAML is `budget`, as in the `--budget` flag.
    #[serde(rename = "budget")]
    pub score_budget: u32,
    /// Trainings a run may run (the k of KNAS's top-k).
    pub top_k: u32,
    /// Candidates one proposal may hold.
    pub max_batch: u32,
}

impl Default for SearchSettings {
    fn default() -> SearchSettings {
        SearchSettings { score_budget: 100, top_k: 3, max_batch: 16 }
    }
}

impl SearchSettings {
    /// Checks the settings; the message starts with the offending key.
    pub fn validate(&self) -> Result<(), String> {
        match [("budget", self.score_budget), ("max-batch", self.max_batch)].iter().find(|(_, value)| *value == 0) {
            Some((key, _)) => Err(format!("{key} must be at least 1, got 0")),
            None => Ok(()),
        }
    }

    /// The run's full search specification with these settings.
    pub fn spec(&self, params: serde_json::Value, limits: PolicyLimits) -> SearchSpec {
        SearchSpec {
            budget: Budget { scores: self.score_budget, trainings: self.top_k },
            max_batch: self.max_batch,
            max_epochs: crate::run::DEFAULT_MAX_EPOCHS,
            params,
            limits,
        }
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

impl RunConfig {
    /// Reads a run file; a relative data folder is relative to the file's folder, as in a
    /// service configuration. It is recorded with the run, so it is spelled one way
    /// however the file was named (`run.yaml`, `./run.yaml`: `images`, not `./images`).
    pub fn load(path: &Path) -> Result<RunConfig, ConfigError> {
        let mut config: RunConfig = load_yaml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(folder) = config.experiment.dataset.folder_mut()
            && folder.is_relative()
        {
            *folder = beside(base, folder);
        }
        Ok(config)
    }
}

/// `path` relative to the folder `base`, without `.` components: one spelling however the
/// file that names it was named.
fn beside(base: &Path, path: &Path) -> PathBuf {
    base.join(path).components().filter(|c| *c != std::path::Component::CurDir).collect()
}

/// The service's configuration: `knas serve --config knas.yaml`. An annotated example is
/// `examples/knas.yaml`. Relative paths are relative to the file's folder.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", default)]
pub struct ServiceConfig {
    /// Address of the HTTP API and `/metrics` (port 0 picks a free port; the bound address
    /// is printed at start).
    pub listen: SocketAddr,
    /// The watched folder: each `NAME.wasm` in it drives a run named NAME.
    pub policy_dir: PathBuf,
    /// The run store (SQLite).
    pub store: PathBuf,
    /// Compute device: auto, cpu, cuda or cuda:N.
    pub device: DeviceChoice,
    /// libtorch CPU threads (0: one per core).
    pub threads: i32,
    /// The experiment new runs use.
    pub experiment: Experiment,
    /// Budget and batch settings new runs use.
    pub search: SearchSettings,
    /// Sandbox limits for policy instances.
    pub limits: PolicyLimits,
    /// Limits for one policy, by file name without `.wasm`: the keys given replace those
    /// of `limits` (e.g. more memory and time for a Python policy).
    pub policy_limits: BTreeMap<String, serde_json::Map<String, serde_json::Value>>,
    /// Parameters per policy, by file name without `.wasm`.
    pub policies: BTreeMap<String, serde_json::Value>,
    /// How long a file must stay unchanged before it is (re)loaded, in ms.
    pub debounce_ms: u64,
    /// A published benchmark table (one JSON object per line with `arch` and an
    /// accuracy): each candidate's published accuracy is stored beside what the runs
    /// measure and shown by the API. A yardstick; policies never see it.
    pub table: Option<PathBuf>,
    /// The table's accuracy field (default: the first of acc, accuracy, test_accuracy, …).
    pub table_field: Option<String>,
}

impl Default for ServiceConfig {
    fn default() -> ServiceConfig {
        ServiceConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9400)),
            policy_dir: PathBuf::from("policies"),
            store: PathBuf::from("knas-runs.db"),
            device: DeviceChoice::Auto,
            threads: 0,
            experiment: Experiment::default(),
            search: SearchSettings::default(),
            limits: PolicyLimits::default(),
            policy_limits: BTreeMap::new(),
            policies: BTreeMap::new(),
            debounce_ms: 500,
            table: None,
            table_field: None,
        }
    }
}

impl ServiceConfig {
    /// Reads, checks and resolves a service configuration file.
    pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        let mut config: ServiceConfig = load_yaml(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        let paths = [&mut config.policy_dir, &mut config.store].into_iter().chain(config.table.as_mut());
        for relative in paths.chain(config.experiment.dataset.folder_mut()) {
            if relative.is_relative() {
                *relative = base.join(&*relative);
            }
        }
        let checks = [
            ("experiment", config.experiment.validate()),
            ("search", config.search.validate()),
            ("limits", config.limits.validate()),
            ("threads", if config.threads < 0 { Err(format!("must not be negative, got {}", config.threads)) } else { Ok(()) }),
            ("debounce-ms", if config.debounce_ms == 0 { Err("must be at least 1, got 0".to_owned()) } else { Ok(()) }),
        ];
        if let Some((section, Err(problem))) = checks.into_iter().find(|(_, check)| check.is_err()) {
            let separator = if matches!(section, "threads" | "debounce-ms") { ": " } else { "." };
            return Err(ConfigError::Semantic { path: path.to_owned(), message: format!("{section}{separator}{problem}") });
        }
        for name in config.policy_limits.keys() {
            config.limits_for(name).map_err(|message| ConfigError::Semantic { path: path.to_owned(), message })?;
        }
        // As `--table-field` needs `--table`: a field alone would be silently ignored.
        if config.table_field.is_some() && config.table.is_none() {
            return Err(ConfigError::Semantic { path: path.to_owned(), message: "table-field: set, but no table: to read it from".into() });
        }
        if let Some((name, params)) = config.policies.iter().find(|(_, p)| !p.is_object() && !p.is_null()) {
            return Err(ConfigError::Semantic {
                path: path.to_owned(),
                message: format!("policies.{name}: parameters must be a mapping, got {params}"),
            });
        }
        Ok(config)
    }

    /// The configured benchmark table, read and checked (every line, see [`BenchmarkTable`]).
    pub fn load_table(&self) -> Result<Option<std::sync::Arc<BenchmarkTable>>, crate::table::TableError> {
        self.table.as_deref().map(|path| BenchmarkTable::load(path, self.table_field.as_deref()).map(std::sync::Arc::new)).transpose()
    }

    /// The limits for policy `name`: `limits` with its `policy-limits` entry laid over them;
    /// the message names the entry's key at fault.
    pub fn limits_for(&self, name: &str) -> Result<PolicyLimits, String> {
        let Some(overrides) = self.policy_limits.get(name) else { return Ok(self.limits) };
        let mut merged = serde_json::to_value(self.limits).map_err(|e| e.to_string())?;
        if let Some(fields) = merged.as_object_mut() {
            fields.extend(overrides.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        let limits: PolicyLimits = serde_json::from_value(merged).map_err(|e| format!("policy-limits.{name}: {e}"))?;
        limits.validate().map_err(|problem| format!("policy-limits.{name}.{problem}"))?;
        Ok(limits)
    }

    /// The parameters for policy `name` (an empty object when none are configured).
    pub fn params_for(&self, name: &str) -> serde_json::Value {
        match self.policies.get(name) {
            Some(params) if params.is_object() => params.clone(),
            _ => serde_json::json!({}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_configs_parse_and_errors_point_at_the_line() {
        let text = "experiment:\n  channels: 8\nsearch:\n  budget: 20\nparams:\n  population: 4\n";
        let config: RunConfig = parse_yaml(text, Path::new("run.yaml")).unwrap();
        assert_eq!(config.experiment.channels, 8);
        assert_eq!(config.search, SearchSettings { score_budget: 20, ..SearchSettings::default() });
        assert_eq!(config.params, Some(serde_json::json!({"population": 4})));

        let err = parse_yaml::<RunConfig>("search:\n  budget: 20\n  topk: 3\n", Path::new("run.yaml")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("run.yaml:3:3: search: unknown field `topk`"), "{text}");

        let err = parse_yaml::<RunConfig>("experiment:\n  channels: many\n", Path::new("run.yaml")).unwrap_err();
        assert!(err.to_string().starts_with("run.yaml:2:13: experiment.channels: invalid type"), "{err}");
    }

    #[test]
    fn the_documented_examples_parse() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let service = ServiceConfig::load(&examples.join("knas.yaml")).unwrap();
        assert_eq!(service.params_for("evolution"), serde_json::json!({"population": 10, "sample": 3}));
        assert_eq!(service.experiment, Experiment::default(), "the example documents the defaults");
        assert_eq!(service.limits_for("python-evolution").unwrap().memory_mib, 256);
        let run = RunConfig::load(&examples.join("run.yaml")).unwrap();
        assert_eq!(run.search.top_k, 5);
        assert_eq!(run.experiment.train.epochs, 2);
    }

    #[test]
    fn run_configs_resolve_the_data_folder_against_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.yaml");
        std::fs::write(&path, "experiment: { dataset: \"cifar10:images\" }\n").unwrap();
        assert_eq!(RunConfig::load(&path).unwrap().experiment.dataset, crate::data::DatasetSpec::Cifar10(dir.path().join("images")));
        std::fs::write(&path, "experiment: { dataset: \"mnist:/data/mnist\" }\n").unwrap();
        assert_eq!(RunConfig::load(&path).unwrap().experiment.dataset, crate::data::DatasetSpec::Mnist("/data/mnist".into()));
        // A file in the working folder, however named, gives the folder as written there.
        for (base, path, expected) in [("", "images", "images"), (".", "./images", "images"), ("./conf", "images", "conf/images"), ("conf", "../data", "conf/../data")] {
            assert_eq!(beside(Path::new(base), Path::new(path)), Path::new(expected), "{base} {path}");
        }
    }

    #[test]
    fn service_configs_resolve_paths_and_check_params() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("knas.yaml");
        std::fs::write(&path, "listen: 127.0.0.1:0\npolicy-dir: watched\npolicies:\n  evolution: {population: 5}\n").unwrap();
        let config = ServiceConfig::load(&path).unwrap();
        assert_eq!(config.policy_dir, dir.path().join("watched"));
        assert_eq!(config.store, dir.path().join("knas-runs.db"));
        assert_eq!(config.params_for("evolution"), serde_json::json!({"population": 5}));
        assert_eq!(config.params_for("random"), serde_json::json!({}));
        std::fs::write(&path, "experiment: { dataset: \"cifar10:images\" }\n").unwrap();
        let config = ServiceConfig::load(&path).unwrap();
        assert_eq!(config.experiment.dataset, crate::data::DatasetSpec::Cifar10(dir.path().join("images")), "the data folder too");
        std::fs::write(&path, "policies:\n  evolution: 5\n").unwrap();
        let err = ServiceConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("policies.evolution: parameters must be a mapping"), "{err}");
        std::fs::write(&path, "limits: { memory-mib: 32 }\npolicy-limits: { py: { memory-mib: 256, call-timeout-ms: 5000 } }\n").unwrap();
        let config = ServiceConfig::load(&path).unwrap();
        let py = config.limits_for("py").unwrap();
        assert_eq!((py.memory_mib, py.call_timeout_ms, py.fuel_per_call), (256, 5000, PolicyLimits::default().fuel_per_call));
        assert_eq!(config.limits_for("rust").unwrap().memory_mib, 32);
        std::fs::write(&path, "listen: nowhere\n").unwrap();
        let err = ServiceConfig::load(&path).unwrap_err().to_string();
        assert!(err.contains("knas.yaml:1:9: listen: invalid socket address"), "{err}");
        for (text, message) in [
            ("search: { budget: 0 }\n", "search.budget must be at least 1, got 0"),
            ("experiment: { limit: 0 }\n", "experiment.limit must be at least 1 training image"),
            ("experiment: { score-batch: 1 }\n", "experiment.score-batch must be at least 2, got 1"),
            ("experiment: { reference: 20000 }\n", "experiment.reference must be at most 15625 (the architectures in the space), got 20000"),
            ("experiment: { train: { momentum: 1.5 } }\n", "experiment.train.momentum is out of range: 1.5"),
            ("experiment: { channels: 4611686018427387904 }\n", "experiment.channels must be at most 4096, got 4611686018427387904"),
            ("experiment: { cells: 1000000000 }\n", "experiment.cells must be at most 64, got 1000000000"),
            ("experiment: { train: { epochs: 18446744073709551615 } }\n", "experiment.train.epochs must be at most 10000, got 18446744073709551615"),
            ("limits: { call-timeout-ms: 0 }\n", "limits.call-timeout-ms must be at least 1, got 0"),
            ("debounce-ms: 0\n", "debounce-ms: must be at least 1, got 0"),
            ("policy-limits: { py: { memory-mib: 0 } }\n", "policy-limits.py.memory-mib must be between 1 and 4096, got 0"),
            ("policy-limits: { py: { memory: 9 } }\n", "policy-limits.py: unknown field `memory`, expected one of `call-timeout-ms`, `fuel-per-call`, `memory-mib`, `log-records-per-call`, `log-record-bytes`, `log-bytes-per-minute`"),
            ("threads: -2\n", "threads: must not be negative, got -2"),
            ("table-field: acc\n", "table-field: set, but no table: to read it from"),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = ServiceConfig::load(&path).unwrap_err().to_string();
            assert_eq!(err, format!("{}: {message}", path.display()), "{text}");
        }
    }
}
