//! Katib's experiment and trials in knas's terms, checked: every problem is an
//! `INVALID_ARGUMENT` message naming the parameter, setting or trial at fault.
//!
//! **Parameters.** One categorical parameter per NB201 edge, named `edge-SRC-DST` after the
//! nodes it joins (`edge-0-1`, `edge-0-2`, `edge-1-2`, `edge-0-3`, `edge-1-3`, `edge-2-3`),
//! whose feasible list names the ops the edge may use (`none`, `skip_connect`,
//! `nor_conv_1x1`, `nor_conv_3x3`, `avg_pool_3x3`): all five for the whole space, fewer to
//! narrow it. **Settings** (`algorithm.algorithmSettings`, all optional) are listed in
//! [`SETTINGS`].

use std::collections::{BTreeMap, HashSet};

use crate::run::Experiment;

use super::proto;
use crate::data::DatasetSpec;
use crate::measures::ScoreChoice;
use crate::space::{Arch, EDGES, NUM_EDGES, Op, OpSet};

/// The algorithm name an Experiment gives to have knas suggest its trials.
pub const ALGORITHM: &str = "knas";

/// The settings knas reads, with what each means (also `--help` and the README).
pub const SETTINGS: [(&str, &str); 9] = [
    ("policy", "the search policy: NAME for NAME.wasm in the policy folder (default random)"),
    ("candidates-per-trial", "architectures scored at initialisation per trial the experiment may run, at most 100000 (default 100)"),
    ("score", "aggregate or one measure's name, e.g. mgm (default: knas katib's --score, aggregate)"),
    ("seed", "seed of the policy, the data split and the networks (default: --seed, 0)"),
    ("params", "the policy's parameters, a JSON object (default {})"),
    ("dataset", "scoring data: mnist5k, cifar10:DIR, … as `knas score --dataset` (default: --dataset, mnist5k)"),
    ("channels", "channels of the scored networks' first stage, C, 1 to 256 (default: --channels, 16)"),
    ("cells", "cells per stage of the scored networks, N, 0 to 32 (default: --cells, 5); with channels, the space's largest network must stay within 10^9 weights (C 256: N at most 11)"),
    ("batch-size", "images in the scoring batch, 2 to 1024 (default: --batch-size, 64)"),
];

/// The Experiment's side of the contract, for `knas katib --help`.
pub fn help_text() -> String {
    let edges: Vec<String> = (0..NUM_EDGES).map(parameter_name).collect();
    let ops: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
    let mut text = format!(
        "Experiment parameters: one categorical parameter per NB201 edge, {}, whose feasible list \
         names the ops the edge may use ({}); fewer ops narrow the space.\n\nAlgorithm: {ALGORITHM}, settings (all optional):\n",
        edges.join(", "),
        ops.join(", ")
    );
    for (name, meaning) in SETTINGS {
        text.push_str(&format!("  {name:<22} {meaning}\n"));
    }
    text
}

/// The most trials one `GetSuggestions` may ask for.
pub const MAX_REQUEST: usize = 1_000;

/// Katib's parameter name for edge `e` (in [`EDGES`] order).
pub fn parameter_name(edge: usize) -> String {
    let (src, dst) = EDGES[edge];
    format!("edge-{src}-{dst}")
}

/// A Katib experiment, as knas runs it.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The experiment's name (the run is `katib-NAME`).
    pub name: String,
    /// The ops each edge may use.
    pub allowed: [OpSet; NUM_EDGES],
    /// The objective metric's name and whether higher is better.
    pub metric: String,
    pub maximize: bool,
    /// Trials the experiment runs at most.
    pub max_trials: u32,
    pub policy: String,
    pub candidates_per_trial: u32,
    pub params: serde_json::Value,
    /// The scoring experiment (data, network size, score, seed).
    pub experiment: Experiment,
}

impl Plan {
    /// What the run's results depend on that its stored settings do not hold: the objective
    /// the trials report and the ops Katib may suggest. Compared when Katib asks again, so
    /// that a run never mixes results of two objectives or spaces.
    pub fn trial_terms(&self) -> String {
        let edges: Vec<String> = self.allowed.iter().map(|set| set.ops().map(|op| op.to_string()).collect::<Vec<_>>().join(",")).collect();
        format!("{} {}, ops per edge {}", if self.maximize { "maximize" } else { "minimize" }, self.metric, edges.join(" | "))
    }

    /// Reads and checks an experiment; `base` is the scoring experiment the settings adjust.
    pub fn from_experiment(experiment: Option<&proto::Experiment>, base: &Experiment) -> Result<Plan, String> {
        let experiment = experiment.ok_or("the request carries no experiment")?;
        let spec = experiment.spec.as_ref().ok_or_else(|| format!("experiment {:?} has no spec", experiment.name))?;
        let name = experiment.name.trim();
        if name.is_empty() || name.len() > 200 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("experiment name {:?} is not a Kubernetes name", experiment.name));
        }
        let allowed = space(spec.parameter_specs.as_ref().map_or(&[][..], |p| &p.parameters))?;
        let objective = spec.objective.as_ref().ok_or("objective is missing")?;
        let maximize = match proto::ObjectiveType::try_from(objective.r#type) {
            Ok(proto::ObjectiveType::Maximize) => true,
            Ok(proto::ObjectiveType::Minimize) => false,
            _ => return Err(format!("objective.type must be maximize or minimize, got {}", objective.r#type)),
        };
        let metric = objective.objective_metric_name.trim();
        if metric.is_empty() {
            return Err("objective.objectiveMetricName is missing".to_owned());
        }
        let max_trials = u32::try_from(spec.max_trial_count)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("maxTrialCount must be set to at least 1 (knas sizes its scoring budget by it), got {}", spec.max_trial_count))?;
        let algorithm = spec.algorithm.as_ref().ok_or("algorithm is missing")?;
        if algorithm.algorithm_name != ALGORITHM {
            return Err(format!("algorithm.algorithmName must be {ALGORITHM:?}, got {:?}", algorithm.algorithm_name));
        }
        let mut settings = BTreeMap::new();
        for setting in &algorithm.algorithm_settings {
            if !SETTINGS.iter().any(|(known, _)| *known == setting.name) {
                let names: Vec<&str> = SETTINGS.iter().map(|(n, _)| *n).collect();
                return Err(format!("unknown algorithm setting {:?}; knas reads {}", setting.name, names.join(", ")));
            }
            if settings.insert(setting.name.as_str(), setting.value.trim()).is_some() {
                return Err(format!("algorithm setting {:?} is given twice", setting.name));
            }
        }
        let mut plan = Plan {
            name: name.to_owned(),
            allowed,
            metric: metric.to_owned(),
            maximize,
            max_trials,
            policy: "random".to_owned(),
            candidates_per_trial: 100,
            params: serde_json::json!({}),
            experiment: base.clone(),
        };
        for (&key, &value) in &settings {
            plan.apply(key, value).map_err(|problem| format!("algorithm setting {key}={value:?}: {problem}"))?;
        }
        plan.experiment.validate().map_err(|problem| format!("algorithm settings: {problem}"))?;
        Ok(plan)
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), String> {
        fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
            value.parse().map_err(|_| "not a number in range".to_owned())
        }
        fn within<T: PartialOrd + std::fmt::Display>(value: T, least: T, most: T) -> Result<T, String> {
            if value < least || value > most { Err(format!("must be between {least} and {most} here")) } else { Ok(value) }
        }
        match key {
            "policy" => {
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) || value.starts_with('.') {
                    return Err("a policy name uses only letters, digits, '-', '_' and '.'".to_owned());
                }
                self.policy = value.strip_suffix(".wasm").unwrap_or(value).to_owned();
            }
            "candidates-per-trial" => {
                self.candidates_per_trial = number(value)?;
                if self.candidates_per_trial == 0 || self.candidates_per_trial > 100_000 {
                    return Err("must be between 1 and 100000".to_owned());
                }
            }
            "score" => self.experiment.score = value.parse::<ScoreChoice>().map_err(|e| e.to_string())?,
            "seed" => self.experiment.seed = number(value)?,
            "params" => {
                let params: serde_json::Value = serde_json::from_str(value).map_err(|e| format!("not JSON: {e}"))?;
                if !params.is_object() {
                    return Err("must be a JSON object".to_owned());
                }
                self.params = params;
            }
            "dataset" => self.experiment.dataset = value.parse::<DatasetSpec>().map_err(|e| e.to_string())?,
            // Bounded so that an Experiment cannot make the suggestion pod run out of memory.
            "channels" => self.experiment.channels = within(number(value)?, 1, 256)?,
            "cells" => self.experiment.cells = within(number(value)?, 0, 32)?,
            "batch-size" => self.experiment.score_batch = within(number(value)?, 2, 1024)?,
            _ => return Err("unknown setting".to_owned()),
        }
        Ok(())
    }

    /// The run's name in the store.
    pub fn run_name(&self) -> String {
        format!("katib-{}", self.name)
    }

    /// Architectures in the experiment's space.
    pub fn space_size(&self) -> usize {
        self.allowed.iter().map(|ops| ops.len()).product()
    }

    /// Whether `arch` is in the experiment's space.
    pub fn contains(&self, arch: &Arch) -> bool {
        arch.ops().iter().zip(&self.allowed).all(|(op, allowed)| allowed.contains(*op))
    }

    /// A trial's result, for trials that have one.
    pub fn trial(&self, trial: &proto::Trial) -> Result<Trial, String> {
        let name = &trial.name;
        let assignments = trial
            .spec
            .as_ref()
            .and_then(|s| s.parameter_assignments.as_ref())
            .map_or(&[][..], |a| &a.assignments);
        let arch = arch_of(assignments).map_err(|problem| format!("trial {name:?}: {problem}"))?;
        use proto::trial_status::TrialConditionType as Condition;
        let status = trial.status.as_ref();
        let condition = status.map_or(Ok(Condition::Created), |s| Condition::try_from(s.condition));
        let outcome = match condition {
            Ok(Condition::Succeeded) => {
                let metrics = status.and_then(|s| s.observation.as_ref()).map_or(&[][..], |o| &o.metrics);
                match metrics.iter().find(|m| m.name == self.metric) {
                    Some(metric) => match metric.value.trim().parse::<f64>() {
                        Ok(value) if value.is_finite() => Outcome::Measured(value),
                        _ => Outcome::Failed(format!("Katib trial {name} reported {}={:?}, not a number", self.metric, metric.value)),
                    },
                    None => Outcome::Failed(format!("Katib trial {name} succeeded without reporting {}", self.metric)),
                }
            }
            Ok(c @ (Condition::Failed | Condition::Killed | Condition::Metricsunavailable | Condition::Earlystopped)) => {
                Outcome::Failed(format!("Katib trial {name} ended {}", c.as_str_name()))
            }
            Ok(_) => Outcome::Running,
            Err(_) => return Err(format!("trial {name:?}: unknown condition {}", status.map_or(0, |s| s.condition))),
        };
        Ok(Trial { name: name.clone(), arch, outcome })
    }

    /// The reply's entry for `arch`: one assignment per edge, and labels that name it.
    pub fn assignment(&self, arch: &Arch) -> proto::get_suggestions_reply::ParameterAssignments {
        let assignments = arch
            .ops()
            .iter()
            .enumerate()
            .map(|(edge, op)| proto::ParameterAssignment { name: parameter_name(edge), value: op.name().to_owned() })
            .collect();
        proto::get_suggestions_reply::ParameterAssignments { assignments, trial_name: String::new(), labels: labels(arch) }
    }
}

/// Labels a suggested trial carries. Kubernetes label values allow only `[A-Za-z0-9._-]`
/// (at most 63), so the NB201 string travels as its table index and as its ops in edge
/// order joined by `.` (`nor_conv_3x3` → `conv3x3`, `avg_pool_3x3` → `pool3x3`,
/// `skip_connect` → `skip`).
pub fn labels(arch: &Arch) -> std::collections::HashMap<String, String> {
    let short: Vec<&str> = arch
        .ops()
        .iter()
        .map(|op| match op {
            Op::None => "none",
            Op::SkipConnect => "skip",
            Op::Conv1x1 => "conv1x1",
            Op::Conv3x3 => "conv3x3",
            Op::AvgPool3x3 => "pool3x3",
        })
        .collect();
    [("knas.io/nb201-index".to_owned(), arch.index().to_string()), ("knas.io/nb201-ops".to_owned(), short.join("."))].into()
}

/// One trial Katib reported.
#[derive(Debug, Clone)]
pub struct Trial {
    pub name: String,
    pub arch: Arch,
    pub outcome: Outcome,
}

/// Where a trial stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Created or running: no result yet.
    Running,
    /// Succeeded with the objective metric's value.
    Measured(f64),
    /// Ended without a usable result (why).
    Failed(String),
}

/// The space the parameters describe: exactly one categorical parameter per edge.
fn space(parameters: &[proto::ParameterSpec]) -> Result<[OpSet; NUM_EDGES], String> {
    let names: Vec<String> = (0..NUM_EDGES).map(parameter_name).collect();
    let mut allowed = [OpSet::EMPTY; NUM_EDGES];
    for parameter in parameters {
        let edge = names
            .iter()
            .position(|n| *n == parameter.name)
            .ok_or_else(|| format!("parameter {:?} is not an NB201 edge; knas expects {}", parameter.name, names.join(", ")))?;
        if !allowed[edge].is_empty() {
            return Err(format!("parameter {:?} is given twice", parameter.name));
        }
        if proto::ParameterType::try_from(parameter.parameter_type) != Ok(proto::ParameterType::Categorical) {
            return Err(format!("parameter {:?} must be categorical (its feasible list names the edge's ops)", parameter.name));
        }
        let list = parameter.feasible_space.as_ref().map_or(&[][..], |f| &f.list);
        if list.is_empty() {
            return Err(format!("parameter {:?} lists no ops", parameter.name));
        }
        for op in list {
            let op = Op::from_name(op.trim()).ok_or_else(|| {
                let ops: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
                format!("parameter {:?}: unknown op {op:?}; NB201's ops are {}", parameter.name, ops.join(", "))
            })?;
            if allowed[edge].contains(op) {
                return Err(format!("parameter {:?} lists {} twice", parameter.name, op.name()));
            }
            allowed[edge] = allowed[edge].with(op);
        }
    }
    if let Some(missing) = allowed.iter().position(|ops| ops.is_empty()) {
        return Err(format!("parameter {:?} is missing: knas expects one per NB201 edge ({})", names[missing], names.join(", ")));
    }
    Ok(allowed)
}

/// The architecture a trial's assignments name.
fn arch_of(assignments: &[proto::ParameterAssignment]) -> Result<Arch, String> {
    let mut ops = [None; NUM_EDGES];
    let mut seen = HashSet::new();
    for assignment in assignments {
        let edge = (0..NUM_EDGES)
            .find(|&e| parameter_name(e) == assignment.name)
            .ok_or_else(|| format!("parameter {:?} is not an NB201 edge", assignment.name))?;
        if !seen.insert(edge) {
            return Err(format!("parameter {:?} is assigned twice", assignment.name));
        }
        ops[edge] = Some(Op::from_name(assignment.value.trim()).ok_or_else(|| format!("parameter {:?}: unknown op {:?}", assignment.name, assignment.value))?);
    }
    let mut chosen = [Op::None; NUM_EDGES];
    for (edge, op) in ops.iter().enumerate() {
        chosen[edge] = op.ok_or_else(|| format!("parameter {:?} is not assigned", parameter_name(edge)))?;
    }
    Ok(Arch::new(chosen))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(name: &str, kind: proto::ParameterType, ops: &[&str]) -> proto::ParameterSpec {
        proto::ParameterSpec {
            name: name.into(),
            parameter_type: kind as i32,
            feasible_space: Some(proto::FeasibleSpace { list: ops.iter().map(|s| s.to_string()).collect(), ..Default::default() }),
        }
    }

    fn experiment(parameters: Vec<proto::ParameterSpec>, settings: &[(&str, &str)]) -> proto::Experiment {
        proto::Experiment {
            name: "nb201".into(),
            spec: Some(proto::ExperimentSpec {
                parameter_specs: Some(proto::experiment_spec::ParameterSpecs { parameters }),
                objective: Some(proto::ObjectiveSpec {
                    r#type: proto::ObjectiveType::Maximize as i32,
                    objective_metric_name: "accuracy".into(),
                    ..Default::default()
                }),
                algorithm: Some(proto::AlgorithmSpec {
                    algorithm_name: "knas".into(),
                    algorithm_settings: settings.iter().map(|(n, v)| proto::AlgorithmSetting { name: (*n).into(), value: (*v).into() }).collect(),
                }),
                max_trial_count: 4,
                ..Default::default()
            }),
        }
    }

    fn full() -> Vec<proto::ParameterSpec> {
        let ops: Vec<&str> = Op::ALL.iter().map(|o| o.name()).collect();
        (0..NUM_EDGES).map(|e| parameter(&parameter_name(e), proto::ParameterType::Categorical, &ops)).collect()
    }

    fn plan(parameters: Vec<proto::ParameterSpec>, settings: &[(&str, &str)]) -> Result<Plan, String> {
        Plan::from_experiment(Some(&experiment(parameters, settings)), &Experiment::default())
    }

    #[test]
    fn the_whole_space_and_settings_are_read() {
        let p = plan(full(), &[("policy", "evolution"), ("candidates-per-trial", "20"), ("seed", "7"), ("params", r#"{"population": 8}"#)])
            .expect("valid");
        assert_eq!(p.space_size(), 15_625);
        assert_eq!((p.policy.as_str(), p.candidates_per_trial, p.experiment.seed, p.max_trials), ("evolution", 20, 7, 4));
        assert_eq!(p.params["population"], 8);
        assert_eq!(p.run_name(), "katib-nb201");
    }

    #[test]
    fn a_subset_narrows_the_space() {
        let mut parameters = full();
        parameters[2] = parameter("edge-1-2", proto::ParameterType::Categorical, &["nor_conv_3x3", "skip_connect"]);
        let p = plan(parameters, &[]).expect("valid");
        assert_eq!(p.space_size(), 5usize.pow(5) * 2);
        let inside = Arch::new([Op::None, Op::None, Op::SkipConnect, Op::None, Op::None, Op::None]);
        let outside = Arch::new([Op::None, Op::None, Op::AvgPool3x3, Op::None, Op::None, Op::None]);
        assert!(p.contains(&inside) && !p.contains(&outside));
    }

    /// The experiment's parameters, its algorithm settings, and the message they must get.
    type BadCase<'a> = (Vec<proto::ParameterSpec>, Vec<(&'a str, &'a str)>, &'a str);

    #[test]
    fn bad_parameters_and_settings_are_named() {
        let cases: Vec<BadCase> = vec![
            (full()[..5].to_vec(), vec![], "parameter \"edge-2-3\" is missing"),
            (
                [full(), vec![parameter("lr", proto::ParameterType::Double, &[])]].concat(),
                vec![],
                "parameter \"lr\" is not an NB201 edge",
            ),
            (
                {
                    let mut p = full();
                    p[0] = parameter("edge-0-1", proto::ParameterType::Categorical, &["conv9x9"]);
                    p
                },
                vec![],
                "parameter \"edge-0-1\": unknown op \"conv9x9\"",
            ),
            (
                {
                    let mut p = full();
                    p[1].parameter_type = proto::ParameterType::Int as i32;
                    p
                },
                vec![],
                "parameter \"edge-0-2\" must be categorical",
            ),
            (full(), vec![("population", "3")], "unknown algorithm setting \"population\""),
            (full(), vec![("seed", "-1")], "algorithm setting seed=\"-1\""),
            (full(), vec![("params", "[1]")], "algorithm setting params=\"[1]\": must be a JSON object"),
            (full(), vec![("score", "nonsense")], "algorithm setting score=\"nonsense\""),
            (full(), vec![("policy", "../etc/x")], "algorithm setting policy="),
            (full(), vec![("channels", "-4")], "algorithm setting channels=\"-4\": must be between 1 and 256 here"),
            (full(), vec![("channels", "100000")], "algorithm setting channels=\"100000\": must be between 1 and 256 here"),
            (full(), vec![("batch-size", "1")], "algorithm setting batch-size=\"1\": must be between 2 and 1024 here"),
        ];
        for (parameters, settings, expected) in cases {
            let error = plan(parameters, &settings).expect_err(expected);
            assert!(error.contains(expected), "{error:?} does not say {expected:?}");
        }
    }

    #[test]
    fn trials_map_to_architectures_and_outcomes() {
        let p = plan(full(), &[]).expect("valid");
        let arch = Arch::from_index(1234).expect("index");
        let mut reply = p.assignment(&arch);
        let trial = |condition: proto::trial_status::TrialConditionType, metrics: &[(&str, &str)], assignments: Vec<proto::ParameterAssignment>| proto::Trial {
            name: "t1".into(),
            spec: Some(proto::TrialSpec { parameter_assignments: Some(proto::trial_spec::ParameterAssignments { assignments }), ..Default::default() }),
            status: Some(proto::TrialStatus {
                condition: condition as i32,
                observation: Some(proto::Observation {
                    metrics: metrics.iter().map(|(n, v)| proto::Metric { name: (*n).into(), value: (*v).into() }).collect(),
                }),
                ..Default::default()
            }),
        };
        use proto::trial_status::TrialConditionType as C;
        let t = p.trial(&trial(C::Succeeded, &[("loss", "0.3"), ("accuracy", "0.91")], reply.assignments.clone())).expect("valid");
        assert_eq!((t.arch, t.outcome), (arch, Outcome::Measured(0.91)));
        let t = p.trial(&trial(C::Running, &[], reply.assignments.clone())).expect("valid");
        assert_eq!(t.outcome, Outcome::Running);
        let t = p.trial(&trial(C::Failed, &[], reply.assignments.clone())).expect("valid");
        assert_eq!(t.outcome, Outcome::Failed("Katib trial t1 ended FAILED".into()));
        let t = p.trial(&trial(C::Succeeded, &[("loss", "0.3")], reply.assignments.clone())).expect("valid");
        assert!(matches!(t.outcome, Outcome::Failed(ref m) if m.contains("without reporting accuracy")));
        // A value that is not a finite number is the trial's failure, named, never a result.
        for bad in ["NaN", "inf", "-inf", "high", ""] {
            let t = p.trial(&trial(C::Succeeded, &[("accuracy", bad)], reply.assignments.clone())).expect("valid");
            assert_eq!(t.outcome, Outcome::Failed(format!("Katib trial t1 reported accuracy={bad:?}, not a number")), "{bad}");
        }
        reply.assignments[3].value = "conv9x9".into();
        let error = p.trial(&trial(C::Running, &[], reply.assignments.clone())).expect_err("unknown op");
        assert_eq!(error, "trial \"t1\": parameter \"edge-0-3\": unknown op \"conv9x9\"");
        reply.assignments[3].value = "none".into();
        reply.assignments.pop();
        let error = p.trial(&trial(C::Running, &[], reply.assignments)).expect_err("missing edge");
        assert!(error.contains("parameter \"edge-2-3\" is not assigned"), "{error}");
    }

    #[test]
    fn labels_are_valid_kubernetes_label_values() {
        for index in [0, 1234, 15_624] {
            let arch = Arch::from_index(index).expect("index");
            let labels = labels(&arch);
            assert_eq!(labels["knas.io/nb201-index"], index.to_string());
            assert_eq!(labels["knas.io/nb201-ops"].split('.').count(), 6, "{labels:?}");
            for value in labels.values() {
                assert!(value.len() <= 63 && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)), "{value}");
            }
        }
    }
}

/// Property tests of the two parsers of a Katib request (see `crate::fuzz`): whatever the
/// experiment and trials hold, a plan comes out whole or the request is refused with a
/// message; nothing panics.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::*;

    /// Mostly the names knas expects (so that many requests get far), some junk.
    fn word(known: Vec<String>) -> impl Strategy<Value = String> {
        prop_oneof![4 => prop::sample::select(known), 1 => "\\PC{0,12}"]
    }

    fn op() -> impl Strategy<Value = String> {
        word(Op::ALL.iter().map(|o| o.name().to_owned()).chain([" none ".to_owned(), String::new()]).collect())
    }

    /// A valid feasible list: some of NB201's ops, each once.
    fn ops() -> impl Strategy<Value = Vec<String>> {
        prop::sample::subsequence(Op::ALL.iter().map(|o| o.name().to_owned()).collect::<Vec<_>>(), 1..=Op::ALL.len())
    }

    fn edge() -> impl Strategy<Value = String> {
        word((0..NUM_EDGES).map(parameter_name).collect())
    }

    fn parameter() -> impl Strategy<Value = proto::ParameterSpec> {
        (edge(), prop_oneof![4 => Just(proto::ParameterType::Categorical as i32), 1 => any::<i32>()], prop::collection::vec(op(), 0..7))
            .prop_map(|(name, parameter_type, list)| proto::ParameterSpec {
                name,
                parameter_type,
                feasible_space: Some(proto::FeasibleSpace { list, ..Default::default() }),
            })
    }

    fn setting() -> impl Strategy<Value = proto::AlgorithmSetting> {
        let valid = prop::sample::select(vec![
            ("policy", "evolution"),
            ("candidates-per-trial", "20"),
            ("seed", "7"),
            ("score", "mgm"),
            ("params", r#"{"population": 8}"#),
            ("channels", "8"),
            ("cells", "2"),
            ("batch-size", "16"),
        ])
        .prop_map(|(name, value)| proto::AlgorithmSetting { name: name.into(), value: value.into() });
        prop_oneof![2 => valid, 1 => any_setting()]
    }

    fn any_setting() -> impl Strategy<Value = proto::AlgorithmSetting> {
        let value = prop_oneof![
            "-?[0-9]{1,7}",
            Just("aggregate".to_owned()),
            Just("mgm".to_owned()),
            Just("evolution.wasm".to_owned()),
            Just("cifar10:/nowhere".to_owned()),
            Just(r#"{"population": 8}"#.to_owned()),
            "\\PC{0,16}",
        ];
        (word(SETTINGS.iter().map(|(n, _)| (*n).to_owned()).collect()), value).prop_map(|(name, value)| proto::AlgorithmSetting { name, value })
    }

    fn experiment() -> impl Strategy<Value = proto::Experiment> {
        let parameters = prop_oneof![
            // The six edges, each with some ops (now and then a junk list): the usual request.
            prop::collection::vec(prop_oneof![6 => ops(), 1 => prop::collection::vec(op(), 0..6)], NUM_EDGES).prop_map(|lists| {
                lists
                    .into_iter()
                    .enumerate()
                    .map(|(e, list)| proto::ParameterSpec {
                        name: parameter_name(e),
                        parameter_type: proto::ParameterType::Categorical as i32,
                        feasible_space: Some(proto::FeasibleSpace { list, ..Default::default() }),
                    })
                    .rev()
                    .collect::<Vec<_>>()
            }),
            prop::collection::vec(parameter(), 0..8),
        ];
        (
            word(vec!["nb201".to_owned(), "a-b.c_d".to_owned()]),
            parameters,
            prop_oneof![4 => Just(2), 1 => any::<i32>()],
            word(vec!["accuracy".to_owned()]),
            prop_oneof![4 => Just(5), 1 => any::<i32>()],
            word(vec![ALGORITHM.to_owned()]),
            prop::collection::vec(setting(), 0..3),
        )
            .prop_map(|(name, parameters, objective, metric, max_trial_count, algorithm, settings)| proto::Experiment {
                name,
                spec: Some(proto::ExperimentSpec {
                    parameter_specs: Some(proto::experiment_spec::ParameterSpecs { parameters }),
                    objective: Some(proto::ObjectiveSpec { r#type: objective, objective_metric_name: metric, ..Default::default() }),
                    algorithm: Some(proto::AlgorithmSpec { algorithm_name: algorithm, algorithm_settings: settings }),
                    max_trial_count,
                    ..Default::default()
                }),
            })
    }

    fn trial() -> impl Strategy<Value = proto::Trial> {
        let assignment = (edge(), op()).prop_map(|(name, value)| proto::ParameterAssignment { name, value });
        let metric = (word(vec!["accuracy".to_owned()]), prop_oneof!["-?[0-9]\\.[0-9]{1,3}", Just("NaN".to_owned()), "\\PC{0,6}"])
            .prop_map(|(name, value)| proto::Metric { name, value });
        (prop::collection::vec(assignment, 0..8), prop_oneof![0..8i32, any::<i32>()], prop::collection::vec(metric, 0..3)).prop_map(
            |(assignments, condition, metrics)| proto::Trial {
                name: "t".into(),
                spec: Some(proto::TrialSpec {
                    parameter_assignments: Some(proto::trial_spec::ParameterAssignments { assignments }),
                    ..Default::default()
                }),
                status: Some(proto::TrialStatus { condition, observation: Some(proto::Observation { metrics }), ..Default::default() }),
            },
        )
    }

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        #[test]
        fn fuzz_katib_requests_are_planned_or_refused_by_name(experiment in experiment(), trials in prop::collection::vec(trial(), 0..4), index in 0..crate::space::NUM_ARCHS) {
            let plan = match Plan::from_experiment(Some(&experiment), &Experiment::default()) {
                Ok(plan) => plan,
                Err(message) => {
                    prop_assert!(!message.is_empty());
                    return Ok(());
                }
            };
            // A plan is whole: a space with every edge allowed something, budgets in range.
            prop_assert!(plan.allowed.iter().all(|ops| !ops.is_empty()) && plan.space_size() >= 1);
            prop_assert!((1..=100_000).contains(&plan.candidates_per_trial) && plan.max_trials >= 1 && plan.params.is_object());
            // What knas suggests reads back as the same architecture.
            let arch = Arch::from_index(index).expect("in range");
            let suggested = proto::Trial {
                name: "back".into(),
                spec: Some(proto::TrialSpec {
                    parameter_assignments: Some(proto::trial_spec::ParameterAssignments { assignments: plan.assignment(&arch).assignments }),
                    ..Default::default()
                }),
                status: None,
            };
            let back = plan.trial(&suggested).expect("knas's own assignment");
            prop_assert_eq!(back.arch, arch);
            prop_assert!(matches!(back.outcome, Outcome::Running));
            for trial in &trials {
                // The same status on an assignment knas made (random assignments are
                // almost never whole): read as an outcome, or refused for its condition
                // alone; a measured value is always a finite number.
                let on_valid = proto::Trial { spec: suggested.spec.clone(), ..trial.clone() };
                match plan.trial(&on_valid) {
                    Ok(read) => {
                        prop_assert_eq!(read.arch, arch);
                        if let Outcome::Measured(value) = read.outcome {
                            prop_assert!(value.is_finite());
                        }
                    }
                    Err(message) => prop_assert!(message.contains("unknown condition"), "{}", message),
                }
                match plan.trial(trial) {
                    Ok(read) => {
                        if let Outcome::Measured(value) = read.outcome {
                            prop_assert!(value.is_finite());
                        }
                    }
                    Err(message) => prop_assert!(message.starts_with("trial \"t\": "), "{}", message),
                }
            }
        }
    }
}
