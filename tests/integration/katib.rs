//! `knas katib`, the Kubeflow Katib suggestion service: driven by Katib's own Python
//! client stubs through a whole simulated experiment, and by a tonic client in Rust.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use knas::katib::proto::suggestion_client::SuggestionClient;
use knas::katib::proto::{self as api, GetSuggestionsRequest, ValidateAlgorithmSettingsRequest};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::common::{policy, tool};

const EDGES: [&str; 6] = ["edge-0-1", "edge-0-2", "edge-1-2", "edge-0-3", "edge-1-3", "edge-2-3"];
pub const OPS: [&str; 5] = ["none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3"];

/// The whole experiment of `tests/katib/simulate.py` (see its header), with Katib's stubs
/// from `kubeflow-katib==0.19.0` in the venv `scripts/install-test-tools.sh` makes.
#[test]
fn a_whole_experiment_through_katibs_python_client() {
    let Some(python) = tool("katib-python") else { return };
    let dir = tempfile::tempdir().unwrap();
    let policies = policy("random").parent().unwrap().to_owned();
    let script = crate::common::workspace().join("tests").join("katib").join("simulate.py");
    let out = Command::new(python).arg(script).arg(env!("CARGO_BIN_EXE_knas")).arg(&policies).arg(dir.path()).output().unwrap();
    let log = std::fs::read_to_string(dir.path().join("katib.log")).unwrap_or_default();
    assert!(out.status.success(), "{}\n{}\nservice log:\n{log}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // Three rounds of two, every architecture new.
    let archs: Vec<&str> = summary["rounds"].as_array().unwrap().iter().flat_map(|r| r.as_array().unwrap()).map(|a| a.as_str().unwrap()).collect();
    assert_eq!(archs.len(), 6);
    assert_eq!(archs.iter().collect::<std::collections::HashSet<_>>().len(), 6, "{archs:?}");
    assert_eq!(summary["restart_same_answer"], true);
    assert_eq!(summary["recomputed_same_answer"], true);
    // Four trials reported before the last round: three succeeded, one failed.
    assert_eq!((summary["trained"].as_u64(), summary["failed_trials"].as_u64()), (Some(3), Some(1)), "{summary}");
    assert!(archs[..4].contains(&summary["winner"]["candidate"].as_str().unwrap()), "{summary}");
    for case in ["unknown setting", "missing policy", "unknown op", "trial with unknown op", "0 trials", "100000 trials", "truncated message"] {
        assert!(summary["bad_input"][case].is_string(), "{case}: {summary}");
    }
}

/// The flags every Experiment's settings adjust are checked before serving: a bad one
/// stops `knas katib` at once, named, instead of failing every Experiment's first request.
#[test]
fn a_bad_scoring_flag_stops_the_service_before_it_listens() {
    let dir = tempfile::tempdir().unwrap();
    for (flag, value, said) in [("--channels", "0", "channels must be at least 1"), ("--reference", "1", "reference must be at least 2")] {
        let out = Command::new(env!("CARGO_BIN_EXE_knas"))
            .args(["katib", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--device", "cpu", flag, value, "--store"])
            .arg(dir.path().join("k.db"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag} {value}: {stderr}");
        assert!(stderr.contains(&format!("invalid scoring experiment: {said}")) && !stderr.contains("suggestion service on"), "{stderr}");
    }
}

/// The ports are a JSON line on stdout whatever the logging; with `--log-json` every line
/// on stderr is a JSON record.
#[test]
fn the_ports_are_a_json_line_on_stdout_and_json_logs_stay_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_knas"))
        .args(["katib", "--log-json", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--device", "cpu", "--store"])
        .arg(dir.path().join("k.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let ports: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert!(ports["grpc"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{ports}");
    assert!(ports["metrics"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{ports}");
    // Stopped, its stderr is read whole: records only.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines() {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "not a JSON record: {line}");
    }
}

/// A running `knas katib` on free ports, stopped when dropped.
pub struct Service {
    child: Child,
    /// `http://HOST:PORT` of the gRPC service.
    pub address: String,
    /// `HOST:PORT` of /metrics.
    pub metrics: String,
}

impl Service {
    pub fn start(store: &Path) -> Service {
        let policies = policy("random").parent().unwrap().to_owned();
        let mut child = Command::new(env!("CARGO_BIN_EXE_knas"))
            .args(["katib", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--device", "cpu", "--threads", "1", "--policy-dir"])
            .arg(policies)
            .arg("--store")
            .arg(store)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        let address = line.split("suggestion service on ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap_or_else(|| panic!("{line}")).to_owned();
        let metrics = line.split("metrics on http://").nth(1).and_then(|rest| rest.strip_suffix("/metrics\n")).unwrap_or_else(|| panic!("{line}")).to_owned();
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Service { child, address: format!("http://{address}"), metrics }
    }
}

impl Service {
    /// SIGTERM, then the exit status (within a minute).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait_exit()
    }

    pub fn signal_term(&self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
    }

    /// The exit status, within a minute.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit a minute after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a service on a fresh store and runs `talk` with a client connected to it; the
/// service is stopped when `talk` ends. Gives back the store's path, and its folder, which
/// is removed when dropped.
fn with_client(talk: impl AsyncFnOnce(SuggestionClient<tonic::transport::Channel>)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knas.db");
    let service = Service::start(&path);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let client = SuggestionClient::connect(service.address.clone()).await.unwrap();
        talk(client).await;
    });
    (dir, path)
}

pub fn experiment(name: &str, allowed: &[&[&str]; 6], settings: &[(&str, &str)], max_trials: i32) -> api::Experiment {
    api::Experiment {
        name: name.into(),
        spec: Some(api::ExperimentSpec {
            parameter_specs: Some(api::experiment_spec::ParameterSpecs {
                parameters: EDGES
                    .iter()
                    .zip(allowed)
                    .map(|(name, ops)| api::ParameterSpec {
                        name: (*name).into(),
                        parameter_type: api::ParameterType::Categorical as i32,
                        feasible_space: Some(api::FeasibleSpace { list: ops.iter().map(|s| s.to_string()).collect(), ..Default::default() }),
                    })
                    .collect(),
            }),
            objective: Some(api::ObjectiveSpec { r#type: api::ObjectiveType::Minimize as i32, objective_metric_name: "loss".into(), ..Default::default() }),
            algorithm: Some(api::AlgorithmSpec {
                algorithm_name: "knas".into(),
                algorithm_settings: [("channels", "2"), ("cells", "1"), ("batch-size", "4"), ("score", "synflow")]
                    .iter()
                    .chain(settings)
                    .map(|(n, v)| api::AlgorithmSetting { name: (*n).into(), value: (*v).into() })
                    .collect(),
            }),
            max_trial_count: max_trials,
            ..Default::default()
        }),
    }
}

pub fn request(experiment: &api::Experiment, trials: Vec<api::Trial>, n: i32) -> GetSuggestionsRequest {
    GetSuggestionsRequest { experiment: Some(experiment.clone()), trials, current_request_number: n, total_request_number: n }
}

fn trial(name: &str, assignments: Vec<api::ParameterAssignment>, loss: &str) -> api::Trial {
    api::Trial {
        name: name.into(),
        spec: Some(api::TrialSpec { parameter_assignments: Some(api::trial_spec::ParameterAssignments { assignments }), ..Default::default() }),
        status: Some(api::TrialStatus {
            condition: api::trial_status::TrialConditionType::Succeeded as i32,
            observation: Some(api::Observation { metrics: vec![api::Metric { name: "loss".into(), value: loss.into() }] }),
            ..Default::default()
        }),
    }
}

/// A trial Katib has started and not finished.
fn running(name: &str, assignments: Vec<api::ParameterAssignment>) -> api::Trial {
    let mut trial = trial(name, assignments, "0");
    trial.status = Some(api::TrialStatus { condition: api::trial_status::TrialConditionType::Running as i32, ..Default::default() });
    trial
}

/// A narrowed space, exhausted; a minimised objective; health answering during a long
/// scoring request.
#[test]
fn a_tonic_client_narrows_the_space_and_health_answers_during_scoring() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&dir.path().join("knas.db"));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = SuggestionClient::connect(service.address.clone()).await.unwrap();
        // Two ops on edge 0-1, one elsewhere: a space of two architectures.
        let narrow: [&[&str]; 6] = [&["nor_conv_3x3", "skip_connect"], &["none"], &["skip_connect"], &["none"], &["none"], &["nor_conv_1x1"]];
        let exp = experiment("narrow", &narrow, &[("candidates-per-trial", "4")], 2);
        client.validate_algorithm_settings(ValidateAlgorithmSettingsRequest { experiment: Some(exp.clone()) }).await.unwrap();
        let first = client.get_suggestions(request(&exp, vec![], 1)).await.unwrap().into_inner();
        let assignments = first.parameter_assignments[0].assignments.clone();
        assert_eq!(assignments.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), EDGES);
        assert!(["nor_conv_3x3", "skip_connect"].contains(&assignments[0].value.as_str()), "{assignments:?}");
        assert_eq!(assignments[5].value, "nor_conv_1x1");
        let trials = vec![trial("t0", assignments.clone(), "0.7")];
        let second = client.get_suggestions(request(&exp, trials.clone(), 1)).await.unwrap().into_inner();
        assert_ne!(second.parameter_assignments[0].assignments[0].value, assignments[0].value, "a trialled architecture came back");
        let trials = [trials, vec![trial("t1", second.parameter_assignments[0].assignments.clone(), "0.5")]].concat();
        let exhausted = client.get_suggestions(request(&exp, trials, 1)).await.unwrap_err();
        assert_eq!(exhausted.code(), tonic::Code::OutOfRange, "{exhausted:?}");
        assert!(exhausted.message().contains("only 0 of the experiment's 2 architectures have no trial"), "{}", exhausted.message());

        // Raising maxTrialCount resumes an experiment (its budget grows); changing a
        // setting is refused, saying so.
        let full = [&OPS[..]; 6];
        let grow = |max_trials, seed: &'static str| experiment("grow", &full, &[("candidates-per-trial", "3"), ("seed", seed)], max_trials);
        let first = client.get_suggestions(request(&grow(1, "0"), vec![], 1)).await.unwrap().into_inner();
        let trials = vec![trial("g0", first.parameter_assignments[0].assignments.clone(), "0.4")];
        let more = client.get_suggestions(request(&grow(2, "0"), trials.clone(), 1)).await.unwrap().into_inner();
        assert_ne!(more.parameter_assignments[0].assignments, first.parameter_assignments[0].assignments);
        let changed = client.get_suggestions(request(&grow(2, "9"), trials.clone(), 1)).await.unwrap_err();
        assert_eq!(changed.code(), tonic::Code::FailedPrecondition, "{changed:?}");
        assert!(changed.message().contains("experiment grow was first suggested with another experiment") && changed.message().contains("cannot change"), "{}", changed.message());
        // Lowering maxTrialCount, or changing the candidates per trial, is refused too.
        let lowered = client.get_suggestions(request(&grow(1, "0"), trials.clone(), 1)).await.unwrap_err();
        assert!(lowered.message().contains("maxTrialCount can only grow"), "{}", lowered.message());
        let denser = experiment("grow", &full, &[("candidates-per-trial", "5"), ("seed", "0")], 3);
        let denser = client.get_suggestions(request(&denser, trials.clone(), 1)).await.unwrap_err();
        assert!(denser.message().contains("first suggested with another budget"), "{}", denser.message());
        // So is a narrower space, or another objective: the run would mix their results.
        let mut narrower = full;
        narrower[1] = &OPS[..2];
        let narrower = client.get_suggestions(request(&experiment("grow", &narrower, &[("candidates-per-trial", "3"), ("seed", "0")], 2), trials.clone(), 1)).await.unwrap_err();
        assert_eq!(narrower.code(), tonic::Code::FailedPrecondition, "{narrower:?}");
        assert!(narrower.message().contains("another objective or parameter space") && narrower.message().contains("| none,skip_connect |"), "{}", narrower.message());
        let mut flipped = grow(2, "0");
        flipped.spec.as_mut().unwrap().objective = Some(api::ObjectiveSpec { r#type: api::ObjectiveType::Maximize as i32, objective_metric_name: "accuracy".into(), ..Default::default() });
        let flipped = client.get_suggestions(request(&flipped, trials, 1)).await.unwrap_err();
        assert!(flipped.message().contains("(minimize loss, ops per edge") && flipped.message().contains("now maximize accuracy"), "{}", flipped.message());

        // A long request: 600 candidates scored before the first trial is proposed.
        let long = experiment("long", &full, &[("candidates-per-trial", "600")], 1);
        let mut busy = client.clone();
        let started = Instant::now();
        let scoring = tokio::spawn(async move { busy.get_suggestions(request(&long, vec![], 1)).await });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let channel = tonic::transport::Channel::from_shared(service.address.clone()).unwrap().connect().await.unwrap();
        let mut health = HealthClient::new(channel);
        let mut slowest = Duration::ZERO;
        for name in ["", "manager.v1beta1.Suggestion"] {
            let asked = Instant::now();
            let status = health.check(HealthCheckRequest { service: name.into() }).await.unwrap().into_inner().status;
            slowest = slowest.max(asked.elapsed());
            assert_eq!(status, ServingStatus::Serving as i32);
        }
        assert!(!scoring.is_finished(), "the scoring request ended before the health checks ({:?}); make it longer", started.elapsed());
        assert!(slowest < Duration::from_secs(1), "a health check took {slowest:?} during scoring");
        let reply = scoring.await.unwrap().unwrap().into_inner();
        assert_eq!(reply.parameter_assignments.len(), 1);
    });
}

/// A policy that asks for more trainings than maxTrialCount pays for is refused, naming
/// the policy and the budget, before any of them is handed out as a trial.
#[test]
fn trainings_beyond_the_trial_count_are_refused_before_any_trial() {
    with_client(async |mut client| {
        // Three distinct architectures to train, with two trials in the experiment.
        let candidates: Vec<_> = (0..3).map(|op| serde_json::json!({"ops": [[op], [1], [2], [0], [3], [1]], "train": true})).collect();
        let params = serde_json::json!({"act": "propose", "candidates": candidates}).to_string();
        let greedy = experiment("greedy", &[&OPS[..]; 6], &[("policy", "hostile"), ("params", &params)], 2);
        let refused = client.get_suggestions(request(&greedy, vec![], 1)).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
        let message = refused.message();
        assert!(message.contains("policy hostile@") && message.contains("3 new trainings") && message.contains("and 2 remain in the budget"), "{message}");
    });
}

/// The trials the service fills in itself (the policy waiting) spend budget the policy was
/// not told about: a proposal the budget covered when it was made still goes on to trials.
#[test]
fn a_waiting_proposal_survives_the_services_own_fill_trials() {
    with_client(async |mut client| {
        // Train one architecture; once it is known, three more at once.
        let train = |op: u32| serde_json::json!({"ops": [[op], [4], [4], [op], [4], [4]], "train": true});
        let params = serde_json::json!({"act": "script", "proposals": [[train(0)], [train(1), train(2), train(3)]]}).to_string();
        let exp = experiment("fills", &[&OPS[..]; 6], &[("policy", "hostile"), ("params", &params), ("candidates-per-trial", "3")], 4);
        let assignments = |reply: &api::GetSuggestionsReply, i: usize| reply.parameter_assignments[i].assignments.clone();
        let first_op = |assignments: &[api::ParameterAssignment]| assignments[0].value.clone();

        // Two trials asked: the policy's one, and one the service fills in.
        let first = client.get_suggestions(request(&exp, vec![], 2)).await.unwrap().into_inner();
        let (a, fill) = (assignments(&first, 0), assignments(&first, 1));
        assert_eq!((first_op(&a), a[1].value.as_str()), ("none".to_owned(), "avg_pool_3x3"), "{a:?}");
        // `a` done, the fill running: the policy proposes three trainings, 3 trials left.
        let trials = vec![trial("a", a.clone(), "0.5"), running("fill", fill.clone())];
        let second = client.get_suggestions(request(&exp, trials, 1)).await.unwrap().into_inner();
        let b = assignments(&second, 0);
        assert_eq!(first_op(&b), "skip_connect", "{b:?}");
        // The fill is done too: 2 trials left for the 3 trainings the proposal asked, one
        // of which (`b`) is running. The proposal goes on; it is not refused.
        let trials = vec![trial("a", a, "0.5"), trial("fill", fill, "0.6"), running("b", b)];
        let third = client.get_suggestions(request(&exp, trials, 1)).await.unwrap().into_inner();
        assert_eq!(first_op(&assignments(&third, 0)), "nor_conv_1x1");
    });
}

/// An experiment deleted and created again under its name resumes its run: what was
/// trained then is not proposed again, though Katib sends no trials for it.
#[test]
fn a_recreated_experiment_does_not_train_an_architecture_twice() {
    with_client(async |mut client| {
        // Three architectures: they differ on edge 0-1 only.
        let three: [&[&str]; 6] = [&["nor_conv_3x3", "skip_connect", "avg_pool_3x3"], &["none"], &["skip_connect"], &["none"], &["none"], &["nor_conv_1x1"]];
        let exp = experiment("again", &three, &[("candidates-per-trial", "3")], 3);
        let op = |reply: &api::GetSuggestionsReply| reply.parameter_assignments[0].assignments[0].value.clone();
        let first = client.get_suggestions(request(&exp, vec![], 1)).await.unwrap().into_inner();
        let trials = vec![trial("x", first.parameter_assignments[0].assignments.clone(), "0.5")];
        let second = client.get_suggestions(request(&exp, trials, 1)).await.unwrap().into_inner();
        assert_ne!(op(&first), op(&second));
        // Created again: Katib knows no trials of it, the store knows the first's result.
        let recreated = client.get_suggestions(request(&exp, vec![], 1)).await.unwrap().into_inner();
        assert_ne!(op(&recreated), op(&first), "trained already");
    });
}

/// Filling a request once the policy has spent the score budget proposes new candidates
/// without scoring them: the run's scores stay within its budget.
#[test]
fn fills_score_only_within_the_budget() {
    let (_dir, path) = with_client(async |mut client| {
        // A space of two architectures. The policy scores random ones of the whole space
        // until the budget (2 × 2) is spent, all outside it (recorded as errors), then is
        // done: the trial is the service's fill, with nothing scored to take it from.
        let narrow: [&[&str]; 6] = [&["nor_conv_3x3", "skip_connect"], &["none"], &["skip_connect"], &["none"], &["none"], &["nor_conv_1x1"]];
        let params = serde_json::json!({"act": "nothing"}).to_string();
        let exp = experiment("spent", &narrow, &[("policy", "hostile"), ("params", &params), ("candidates-per-trial", "2")], 2);
        let reply = client.get_suggestions(request(&exp, vec![], 1)).await.unwrap().into_inner();
        let edge = &reply.parameter_assignments[0].assignments[0].value;
        assert!(["nor_conv_3x3", "skip_connect"].contains(&edge.as_str()), "{edge}");
    });
    let store = knas::store::RunStore::open(&path).unwrap();
    let run = store.run("katib-spent").unwrap().expect("the run is stored");
    assert_eq!(store.spent(run.id).unwrap().scores, 4, "no score beyond the budget");
}

/// The scores a proposal waiting on a trial will make are the policy's: the trials the
/// service fills in meanwhile leave them room, so the run never scores past its budget.
/// At SIGTERM the runs the service drives are recorded as stopped, not left running.
#[test]
fn sigterm_records_the_runs_it_drives_as_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knas.db");
    let mut service = Service::start(&path);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = SuggestionClient::connect(service.address.clone()).await.unwrap();
        let exp = experiment("halted", &[&OPS[..]; 6], &[("candidates-per-trial", "2")], 3);
        client.get_suggestions(request(&exp, vec![], 1)).await.unwrap();
    });
    let status = |path: &Path| {
        let store = knas::store::RunStore::open(path).unwrap();
        store.run("katib-halted").unwrap().expect("the run is stored").status
    };
    assert_eq!(status(&path), knas::store::RunStatus::Running, "waiting on its trial");
    // The client's runtime still holds its connection open: the exit also shows that such
    // a client keeps the service no longer than its grace period.
    assert!(service.terminate().success(), "a clean exit");
    assert_eq!(status(&path), knas::store::RunStatus::Stopped);
}

/// SIGTERM during a request that would score for hours: the request stops at its next
/// candidate and is answered UNAVAILABLE, what it scored is kept, the run is recorded as
/// stopped, and the process exits.
#[test]
fn sigterm_cuts_a_long_request_short_and_keeps_what_it_scored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("knas.db");
    let mut service = Service::start(&path);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let scored = |path: &Path| -> Option<(knas::store::RunStatus, u32)> {
        let store = knas::store::RunStore::open(path).ok()?;
        let run = store.run("katib-endless").ok()??;
        Some((run.status, store.spent(run.id).ok()?.scores))
    };
    runtime.block_on(async {
        let mut client = SuggestionClient::connect(service.address.clone()).await.unwrap();
        let endless = experiment("endless", &[&OPS[..]; 6], &[("candidates-per-trial", "100000")], 1);
        let scoring = tokio::spawn(async move { client.get_suggestions(request(&endless, vec![], 1)).await });
        let deadline = Instant::now() + Duration::from_secs(120);
        while scored(&path).is_none_or(|(_, scores)| scores < 3) {
            assert!(Instant::now() < deadline, "no scores recorded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        service.signal_term();
        let answer = scoring.await.unwrap().unwrap_err();
        assert_eq!(answer.code(), tonic::Code::Unavailable, "{answer:?}");
        assert!(answer.message().contains("shutting down; what was scored is kept"), "{}", answer.message());
    });
    assert!(service.wait_exit().success(), "a clean exit");
    let (status, scores) = scored(&path).unwrap();
    assert_eq!(status, knas::store::RunStatus::Stopped);
    assert!((3..15_625).contains(&scores), "{scores} scores kept");
}

/// Trial results Katib reports count in the run's metrics, as a run's own trainings do.
#[test]
fn trial_results_reach_the_runs_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start(&dir.path().join("knas.db"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = SuggestionClient::connect(service.address.clone()).await.unwrap();
        let mut exp = experiment("observed", &[&OPS[..]; 6], &[("candidates-per-trial", "1")], 3);
        exp.spec.as_mut().unwrap().objective = Some(api::ObjectiveSpec { r#type: api::ObjectiveType::Maximize as i32, objective_metric_name: "accuracy".into(), ..Default::default() });
        let first = client.get_suggestions(request(&exp, vec![], 2)).await.unwrap().into_inner();
        let accuracy = |name: &str, i: usize, value: &str| {
            let mut trial = trial(name, first.parameter_assignments[i].assignments.clone(), value);
            trial.status.as_mut().unwrap().observation = Some(api::Observation { metrics: vec![api::Metric { name: "accuracy".into(), value: value.into() }] });
            trial
        };
        client.get_suggestions(request(&exp, vec![accuracy("a", 0, "0.5"), accuracy("b", 1, "0.625")], 1)).await.unwrap();
    });
    let metrics = reqwest::blocking::get(format!("http://{}/metrics", service.metrics)).unwrap().text().unwrap();
    for series in [r#"knas_best_accuracy_ratio{run="katib-observed"} 0.625"#, r#"knas_evaluations_total{kind="train",outcome="ok",run="katib-observed"} 2"#] {
        assert!(metrics.lines().any(|line| line == series), "{series} in:\n{metrics}");
    }
}

/// A proposal refused for asking more scores than the budget holds stays refused when
/// Katib asks again: the instance that re-executes the run makes it again, and is held to
/// the score budget too (Katib bounds the trainings itself, nothing else the scores).
#[test]
fn a_proposal_refused_for_its_scores_stays_refused_when_asked_again() {
    let (_dir, path) = with_client(async |mut client| {
        // Budget: 2 trials × 3 candidates = 6 scores. A training, then seven scores.
        let train = serde_json::json!({"ops": [[0], [4], [4], [0], [4], [4]], "train": true});
        let scores: Vec<_> = (0..7).map(|i| serde_json::json!({"ops": [[i % 5], [i / 5], [4], [1], [4], [4]]})).collect();
        let params = serde_json::json!({"act": "script", "proposals": [[train], scores]}).to_string();
        let exp = experiment("overdrawn", &[&OPS[..]; 6], &[("policy", "hostile"), ("params", &params), ("candidates-per-trial", "3")], 2);
        let first = client.get_suggestions(request(&exp, vec![], 1)).await.unwrap().into_inner();
        let trials = vec![trial("t0", first.parameter_assignments[0].assignments.clone(), "0.5")];
        for _ in 0..2 {
            let refused = client.get_suggestions(request(&exp, trials.clone(), 1)).await.unwrap_err();
            assert!(refused.message().contains("asks for 7 new scores and 0 new trainings, but only 6 and 1 remain"), "{}", refused.message());
        }
    });
    let store = knas::store::RunStore::open(&path).unwrap();
    let run = store.run("katib-overdrawn").unwrap().expect("the run is stored");
    assert_eq!(store.spent(run.id).unwrap(), knas::run::Budget { scores: 0, trainings: 1 }, "nothing of the refused proposal made");
}

#[test]
fn fills_leave_room_for_the_scores_a_waiting_proposal_will_make() {
    let (_dir, path) = with_client(async |mut client| {
        // Budget: 4 trials × 1 candidate = 4 scores. One proposal: three scores and a
        // training, which waits for its trial before the scores are made.
        let score = |op: u32| serde_json::json!({"ops": [[op], [4], [4], [1], [4], [4]]});
        let train = serde_json::json!({"ops": [[0], [4], [4], [0], [4], [4]], "train": true});
        let params = serde_json::json!({"act": "script", "proposals": [[score(1), score(2), score(3), train]]}).to_string();
        let exp = experiment("reserved", &[&OPS[..]; 6], &[("policy", "hostile"), ("params", &params), ("candidates-per-trial", "1")], 4);
        // Three trials: the policy's training and two the service fills in, scoring one
        // candidate each at most, while the waiting proposal holds three of the four scores.
        let first = client.get_suggestions(request(&exp, vec![], 3)).await.unwrap().into_inner();
        let trial_of = |i: usize| first.parameter_assignments[i].assignments.clone();
        // The training done, the fills running: the proposal goes on and makes its scores.
        let trials = vec![trial("t", trial_of(0), "0.5"), running("f1", trial_of(1)), running("f2", trial_of(2))];
        client.get_suggestions(request(&exp, trials, 1)).await.unwrap();
    });
    let store = knas::store::RunStore::open(&path).unwrap();
    let run = store.run("katib-reserved").unwrap().expect("the run is stored");
    let scored: Vec<_> = store.evaluations(run.id).unwrap().into_iter().filter(|r| r.fidelity == knas::run::Fidelity::Score).collect();
    use knas::space::{Arch, Op};
    let archs: Vec<Arch> = scored.iter().filter_map(|r| r.candidate.to_arch().ok()).collect();
    assert_eq!(scored.len(), 4, "the budget's four scores, no more: {archs:?}");
    let pool = Op::AvgPool3x3;
    for op in [Op::SkipConnect, Op::Conv1x1, Op::Conv3x3] {
        let asked = Arch::new([op, pool, pool, Op::SkipConnect, pool, pool]);
        assert!(archs.contains(&asked), "the policy's score of {asked} was made: {archs:?}");
    }
}
