//! Prometheus metrics of the service. Names follow the Prometheus conventions (`knas_`
//! prefix, base units, `_total` counters); labels are bounded: `run` and `policy` are policy
//! file names (a run of `knas katib` is `katib-EXPERIMENT`), `kind` is score|train (of file-system events: create|modify|remove|other),
//! `outcome` and `cause` come from fixed lists.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::run::{Budget, Fidelity};
use crate::search::SearchObserver;
use crate::store::EvaluationRecord;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    pub evaluations: IntCounterVec,
    pub evaluation_seconds: HistogramVec,
    pub score: HistogramVec,
    pub best_score: GaugeVec,
    pub best_accuracy: GaugeVec,
    /// Optimiser steps of the run's trainings, and how far its latest training is: a
    /// training takes minutes where a score takes a second, and the evaluation counters
    /// only move when it ends.
    pub training_steps: IntCounterVec,
    pub training_progress: GaugeVec,
    pub budget_total: IntGaugeVec,
    pub budget_remaining: IntGaugeVec,
    pub runs: IntGaugeVec,
    pub policy_calls: IntCounterVec,
    pub policy_call_seconds: HistogramVec,
    pub policy_errors: IntCounterVec,
    pub policy_loads: IntCounterVec,
    pub watcher_events: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    /// Katib suggestion service (`knas katib`): gRPC requests by method and status code.
    pub katib_requests: IntCounterVec,
    pub katib_request_seconds: HistogramVec,
    /// Candidates the suggestion service scored, and trials it proposed, by run.
    pub katib_candidates_scored: IntCounterVec,
    pub katib_trials_proposed: IntCounterVec,
    /// Runs whose best-score gauge holds a recorded score (a fresh gauge reads 0, which is
    /// above every aggregate).
    scored_runs: std::sync::Mutex<std::collections::HashSet<String>>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter");
    registry.register(Box::new(metric.clone())).expect("unique name");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    let metric = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid histogram");
    registry.register(Box::new(metric.clone())).expect("unique name");
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    let metric = GaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry.register(Box::new(metric.clone())).expect("unique name");
    metric
}

fn int_gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid gauge");
    registry.register(Box::new(metric.clone())).expect("unique name");
    metric
}

impl Metrics {
    /// Registers every metric, plus the process collector (CPU, memory, file descriptors).
    pub fn new() -> Metrics {
        let r = Registry::new();
        #[cfg(target_os = "linux")]
        r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("process collector");
        let seconds = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];
        let metrics = Metrics {
            evaluations: counter(
                &r,
                "knas_evaluations_total",
                "Candidates evaluated, by run, kind (score|train) and outcome (ok|error|cached).",
                &["run", "kind", "outcome"],
            ),
            evaluation_seconds: histogram(
                &r,
                "knas_evaluation_duration_seconds",
                "Wall time of one evaluation computed by the service, by run and kind.",
                &["run", "kind"],
                seconds.clone(),
            ),
            score: histogram(
                &r,
                "knas_score",
                "Distribution of the scores computed (the rank aggregate, at most 0, or the run's measure), by run.",
                &["run"],
                score_buckets(),
            ),
            best_score: gauge(&r, "knas_best_score", "Highest score recorded in the run.", &["run"]),
            best_accuracy: gauge(&r, "knas_best_accuracy_ratio", "Highest held-out accuracy (0-1) recorded in the run.", &["run"]),
            training_steps: counter(
                &r,
                "knas_training_steps_total",
                "Optimiser steps taken by the run's trainings (a training interrupted and redone counts its steps again), by run.",
                &["run"],
            ),
            training_progress: gauge(
                &r,
                "knas_training_progress_ratio",
                "Share (0-1) of the optimiser steps done in the run's latest training; 1 once it has ended.",
                &["run"],
            ),
            budget_total: int_gauge(&r, "knas_budget", "The run's budget, by kind (score|train).", &["run", "kind"]),
            budget_remaining: int_gauge(&r, "knas_budget_remaining", "What is left of the run's budget, by kind.", &["run", "kind"]),
            runs: int_gauge(&r, "knas_runs", "Runs known to the service, by status.", &["status"]),
            policy_calls: counter(
                &r,
                "knas_policy_calls_total",
                "Calls into policies, by run and call (instantiate|init|observe|propose|checkpoint|restore): instantiating (compiled code set up, start functions run) is counted apart from the calls.",
                &["run", "call"],
            ),
            policy_call_seconds: histogram(
                &r,
                "knas_policy_call_duration_seconds",
                "Wall time of one call into a policy, by call.",
                &["call"],
                vec![1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
            ),
            policy_errors: counter(
                &r,
                "knas_policy_errors_total",
                "Policy failures, by policy and cause (load|timeout|fuel|memory|panic|trap|guest-error|invalid-proposal|no-progress|runtime).",
                &["policy", "cause"],
            ),
            policy_loads: counter(
                &r,
                "knas_policy_loads_total",
                "Policy files taken from the watched folder, by policy and outcome (loaded|reloaded|rejected|waiting: asked again for a run another process still drives).",
                &["policy", "outcome"],
            ),
            watcher_events: counter(
                &r,
                "knas_watcher_events_total",
                "File-system events seen on watched paths, by kind (create|modify|remove|other).",
                &["kind"],
            ),
            config_reloads: counter(
                &r,
                "knas_config_reloads_total",
                "Configuration file reloads, by outcome (applied|rejected).",
                &["outcome"],
            ),
            build_info: int_gauge(&r, "knas_build_info", "Always 1; labels say which knas is running.", &["version"]),
            katib_requests: counter(
                &r,
                "knas_katib_requests_total",
                "Katib suggestion service requests, by method (GetSuggestions|ValidateAlgorithmSettings) and gRPC code.",
                &["method", "code"],
            ),
            katib_request_seconds: histogram(
                &r,
                "knas_katib_request_duration_seconds",
                "Wall time of one Katib suggestion service request, by method.",
                &["method"],
                seconds.clone(),
            ),
            katib_candidates_scored: counter(
                &r,
                "knas_katib_candidates_scored_total",
                "Candidates scored at initialisation by the Katib suggestion service, by run.",
                &["run"],
            ),
            katib_trials_proposed: counter(&r, "knas_katib_trials_proposed_total", "Trials proposed to Katib, by run.", &["run"]),
            registry: r,
            scored_runs: Default::default(),
        };
        metrics.build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        for outcome in ["applied", "rejected"] {
            metrics.config_reloads.with_label_values(&[outcome]);
        }
        metrics
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// A run's budget and what is left of it, by kind (`knas_budget`, `knas_budget_remaining`).
    pub fn set_budget(&self, run: &str, budget: Budget, spent: Budget) {
        for (kind, total, used) in [("score", budget.scores, spent.scores), ("train", budget.trainings, spent.trainings)] {
            self.budget_total.with_label_values(&[run, kind]).set(i64::from(total));
            self.budget_remaining.with_label_values(&[run, kind]).set(i64::from(total.saturating_sub(used)));
        }
    }

    /// Drops every series of run (or policy file) `name`: the service calls it when the
    /// file is removed, so that the series stay bounded by the files present rather than
    /// by every name the folder ever held.
    pub fn forget(&self, name: &str) {
        use std::collections::HashMap;
        // Each series found is removed from every family with a run or policy label; only
        // the one whose label names match takes it, the others refuse.
        macro_rules! remove_from_all {
            ($labels:expr, $($vec:ident),+) => {
                $(let _ = self.$vec.remove($labels);)+
            };
        }
        for family in self.registry.gather() {
            for metric in family.get_metric() {
                let labels: HashMap<&str, &str> = metric.get_label().iter().map(|l| (l.name(), l.value())).collect();
                if labels.get("run") == Some(&name) || labels.get("policy") == Some(&name) {
                    remove_from_all!(
                        &labels, evaluations, evaluation_seconds, score, best_score, best_accuracy, training_steps, training_progress,
                        budget_total, budget_remaining, policy_calls, policy_errors, policy_loads, katib_candidates_scored, katib_trials_proposed
                    );
                }
            }
        }
        self.scored_runs.lock().unwrap_or_else(|e| e.into_inner()).remove(name);
    }

    /// An observer that updates the per-run metrics of `run`.
    pub fn for_run<'a>(&'a self, run: &'a str) -> RunMetrics<'a> {
        RunMetrics { metrics: self, run, stop: None }
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// [`SearchObserver`] that feeds one run's metrics.
pub struct RunMetrics<'a> {
    metrics: &'a Metrics,
    run: &'a str,
    /// Once set, the search is asked to stop (see [`RunMetrics::stopped_by`]).
    stop: Option<&'a std::sync::atomic::AtomicBool>,
}

impl SearchObserver for RunMetrics<'_> {
    fn evaluated(&mut self, record: &EvaluationRecord, fresh: bool) {
        let m = self.metrics;
        let kind = record.fidelity.name();
        let outcome = match (fresh, &record.error) {
            (false, _) => "cached",
            (true, Some(_)) => "error",
            (true, None) => "ok",
        };
        m.evaluations.with_label_values(&[self.run, kind, outcome]).inc();
        if !fresh {
            return;
        }
        m.evaluation_seconds.with_label_values(&[self.run, kind]).observe(record.seconds);
        if let Some(score) = record.score {
            m.score.with_label_values(&[self.run]).observe(score);
        }
        self.best(record);
    }

    fn training_step(&mut self, done: usize, total: usize) {
        self.metrics.training_steps.with_label_values(&[self.run]).inc();
        self.metrics.training_progress.with_label_values(&[self.run]).set(done as f64 / total.max(1) as f64);
    }

    fn policy_called(&mut self, call: &'static str, seconds: f64) {
        self.metrics.policy_calls.with_label_values(&[self.run, call]).inc();
        self.metrics.policy_call_seconds.with_label_values(&[call]).observe(seconds);
    }

    fn interrupted(&self) -> bool {
        self.stop.is_some_and(|stop| stop.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Buckets for scores of any scale and sign: the aggregate lives in (−20, 0], a single
/// measure such as MGM anywhere from 10⁻⁶ to 10⁶ (either sign for some measures): 1, 2, 5
/// steps per decade on both sides of 0.
fn score_buckets() -> Vec<f64> {
    let positive: Vec<f64> = (-6..6).flat_map(|e| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(e))).collect();
    let mut buckets: Vec<f64> = positive.iter().rev().map(|v| -v).collect();
    buckets.push(0.0);
    buckets.extend(positive);
    buckets
}

impl<'a> RunMetrics<'a> {
    /// The same observer, also asking the search to stop once `stop` is set.
    pub fn stopped_by(self, stop: &'a std::sync::atomic::AtomicBool) -> RunMetrics<'a> {
        RunMetrics { stop: Some(stop), ..self }
    }

    /// A result measured outside this process (a Katib trial): counted, and its accuracy
    /// raises the best, but its time is not this process's to put in the histogram.
    pub fn measured_elsewhere(&self, record: &EvaluationRecord) {
        let outcome = if record.error.is_some() { "error" } else { "ok" };
        self.metrics.evaluations.with_label_values(&[self.run, record.fidelity.name(), outcome]).inc();
        self.best(record);
    }

    /// Sets the best-score and best-accuracy gauges from a run's stored records (a run
    /// this process takes up again): the gauges say what the run found, not what this
    /// process saw of it.
    pub fn restore_best(&self, records: &[EvaluationRecord]) {
        for record in records {
            if record.fidelity == Fidelity::Score || record.accuracy.is_some() {
                self.best(record);
            }
        }
    }

    /// Raises the best-score and best-accuracy gauges to `record`'s values.
    pub fn best(&self, record: &EvaluationRecord) {
        let m = self.metrics;
        if let Some(score) = record.score.filter(|_| record.fidelity == Fidelity::Score) {
            let g = m.best_score.with_label_values(&[self.run]);
            let first = m.scored_runs.lock().unwrap_or_else(|e| e.into_inner()).insert(self.run.to_owned());
            if first || score > g.get() {
                g.set(score);
            }
        }
        if let Some(accuracy) = record.accuracy {
            let g = m.best_accuracy.with_label_values(&[self.run]);
            if accuracy > g.get() {
                g.set(accuracy);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::space::{Arch, Candidate};

    #[test]
    fn a_forgotten_name_leaves_no_series_and_the_others_stay() {
        let metrics = Metrics::new();
        for run in ["gone", "kept"] {
            let mut observer = metrics.for_run(run);
            let record = EvaluationRecord {
                seq: 1,
                candidate: Candidate::from(Arch::from_index(3).unwrap()),
                fidelity: Fidelity::Score,
                score: Some(-1.0),
                accuracy: None,
                loss: None,
                train_loss: None,
                params: None,
                flops: None,
                measures: None,
                epochs: None,
                seconds: 0.1,
                error: None,
                policy: format!("{run}@1"),
                created_at: String::new(),
            };
            observer.evaluated(&record, true);
            observer.training_step(1, 2);
            observer.policy_called("propose", 0.01);
            metrics.set_budget(run, Budget { scores: 4, trainings: 1 }, Budget { scores: 1, trainings: 0 });
            metrics.policy_loads.with_label_values(&[run, "loaded"]).inc();
            metrics.policy_errors.with_label_values(&[run, "trap"]).inc();
            metrics.katib_trials_proposed.with_label_values(&[run]).inc();
        }
        let text = metrics.render();
        assert!(text.contains(r#"run="gone""#) && text.contains(r#"policy="gone""#), "{text}");
        metrics.forget("gone");
        let text = metrics.render();
        assert!(!text.contains(r#""gone""#), "{text}");
        for kept in [r#"knas_best_score{run="kept"} -1"#, r#"knas_policy_loads_total{outcome="loaded",policy="kept"} 1"#, r#"knas_katib_trials_proposed_total{run="kept"} 1"#] {
            assert!(text.contains(kept), "{kept} in {text}");
        }
        // A name used again starts afresh: its first score sets its best, whatever it is.
        let scored = metrics.scored_runs.lock().unwrap().clone();
        assert_eq!(scored.into_iter().collect::<Vec<_>>(), ["kept"]);
    }
}
