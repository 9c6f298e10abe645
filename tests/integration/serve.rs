//! `knas serve` end to end: the real binary on loopback with a temporary policy folder.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{knas, policy};

/// A running `knas serve` in its own temporary folder.
pub struct Service {
    pub dir: PathBuf,
    child: Option<Child>,
    pub address: String,
    stderr: PathBuf,
}

/// Settings for tiny, quick runs.
pub fn config(budget: u32, top_k: u32) -> String {
    format!(
        "listen: 127.0.0.1:0\npolicy-dir: policies\nstore: runs.db\ndevice: cpu\nthreads: 1\ndebounce-ms: 200\n\
         experiment: {{ channels: 2, cells: 1, score-batch: 4, limit: 64, reference: 6 }}\n\
         search: {{ budget: {budget}, top-k: {top_k}, max-batch: 4 }}\n"
    )
}

impl Service {
    /// Starts a service in `dir` (created with `knas.yaml` = `config` if new).
    pub fn start_in(dir: &Path, config: &str) -> Service {
        Service::start_with(dir, config, &[])
    }

    /// As [`Service::start_in`], with extra environment variables (e.g. `FAILPOINTS`).
    pub fn start_with(dir: &Path, config: &str, env: &[(&str, &str)]) -> Service {
        Service::spawn(dir, config, env, false)
    }

    /// As [`Service::start_in`], run from inside `dir` with a relative `--config knas.yaml`,
    /// as a user types it.
    pub fn start_inside(dir: &Path, config: &str) -> Service {
        Service::spawn(dir, config, &[], true)
    }

    fn spawn(dir: &Path, config: &str, env: &[(&str, &str)], inside: bool) -> Service {
        std::fs::create_dir_all(dir.join("policies")).unwrap();
        let config_path = dir.join("knas.yaml");
        if !config_path.exists() {
            std::fs::write(&config_path, config).unwrap();
        }
        let stderr = dir.join(format!("stderr-{}.log", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()));
        let mut command = Command::new(env!("CARGO_BIN_EXE_knas"));
        if inside {
            command.current_dir(dir).args(["serve", "--log", "info", "--config", "knas.yaml"]);
        } else {
            command.args(["serve", "--log", "info", "--config"]).arg(&config_path);
        }
        let mut child = command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let announced: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("no address line ({e}): {line:?}"));
        let address = announced["listening"].as_str().unwrap().to_owned();
        let service = Service { dir: dir.to_owned(), child: Some(child), address, stderr };
        service.wait_for("readiness", |s| s.get("/readyz").0 == 200);
        service
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        match reqwest::blocking::get(format!("http://{}{path}", self.address)) {
            Ok(response) => (response.status().as_u16(), response.text().unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    }

    pub fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path);
        assert!(status == 200 || status == 404, "{path}: {status} {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// The run called `name` from the API, if it exists.
    pub fn run(&self, name: &str) -> Option<Value> {
        let (status, body) = self.get(&format!("/api/runs/{name}"));
        (status == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").1
    }

    /// Waits (up to two minutes) until `ready` holds.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&Service) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !ready(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Copies a built policy into the watched folder as `name.wasm`, the way an operator
    /// would: write elsewhere, then rename into place.
    pub fn drop_policy(&self, built: &str, name: &str) {
        let staging = self.dir.join(format!("{name}.staging"));
        std::fs::copy(policy(built), &staging).unwrap();
        std::fs::rename(&staging, self.dir.join("policies").join(format!("{name}.wasm"))).unwrap();
    }

    /// SIGTERM, then the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let child = self.child.as_ref().expect("running");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        self.wait_exit(Duration::from_secs(60))
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// Waits for the process to exit on its own (at most `limit`); its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within {limit:?}; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn recorded(run: &Value) -> u64 {
    run["recorded"]["scores"].as_u64().unwrap() + run["recorded"]["trainings"].as_u64().unwrap()
}

/// The sample value of the metric line starting with `series`, if present.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

#[test]
fn a_configured_table_annotates_the_runs_in_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..knas::space::NUM_ARCHS)
        .map(|i| serde_json::json!({"arch": knas::space::Arch::from_index(i).unwrap().to_string(), "top1": (i % 89) as f64}).to_string())
        .collect();
    std::fs::write(dir.path().join("table.jsonl"), lines.join("\n")).unwrap();
    // Relative paths everywhere: the watcher must still know the table's events as the table's.
    let service = Service::start_inside(dir.path(), &(config(4, 1) + "table: table.jsonl\ntable-field: top1\n"));
    service.drop_policy("random", "random");
    service.wait_for("the run to finish", |s| s.run("random").is_some_and(|r| r["status"] == "done"));
    let winner = &service.run("random").unwrap()["leaderboard"]["winner"];
    let index = winner["candidate"].as_str().unwrap().parse::<knas::space::Arch>().unwrap().index();
    assert_eq!(winner["published_accuracy"].as_f64(), Some((index % 89) as f64), "{winner}");

    // Editing the table reloads the configuration with it; a broken table is a rejected
    // reload that keeps the previous configuration.
    let reloads = |s: &Service, outcome: &str| metric(&s.metrics(), &format!(r#"knas_config_reloads_total{{outcome="{outcome}"}}"#));
    std::fs::write(dir.path().join("table.jsonl"), lines[..100].join("\n") + "\n").unwrap();
    service.wait_for("the edited table to be applied", |s| reloads(s, "applied") == Some(1.0));
    std::fs::write(dir.path().join("table.jsonl"), "{\"arch\": \"nonsense\"}\n").unwrap();
    service.wait_for("the broken table to be rejected", |s| reloads(s, "rejected") == Some(1.0));
    assert_eq!(reloads(&service, "applied"), Some(1.0));
    assert!(service.log().contains("table.jsonl:1"), "{}", service.log());

    // A configuration that names another table, in another folder: that table is watched
    // from then on. A change of threads is said to need a restart.
    std::fs::create_dir_all(dir.path().join("tables")).unwrap();
    std::fs::write(dir.path().join("tables").join("other.jsonl"), lines[..50].join("\n") + "\n").unwrap();
    std::fs::write(dir.path().join("knas.yaml"), config(4, 1).replace("threads: 1", "threads: 2") + "table: tables/other.jsonl\ntable-field: top1\n").unwrap();
    service.wait_for("the new table to be applied", |s| reloads(s, "applied") == Some(2.0));
    assert!(service.log().contains("device and threads changes take effect after a restart"), "{}", service.log());
    std::fs::write(dir.path().join("tables").join("other.jsonl"), lines[..60].join("\n") + "\n").unwrap();
    service.wait_for("the edited new table to be applied", |s| reloads(s, "applied") == Some(3.0));
}

#[test]
fn a_policy_that_fails_as_its_run_starts_waits_for_another_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start_in(dir.path(), &(config(4, 0) + "policies:\n  hostile: {act: trap, at: init}\n"));
    service.drop_policy("hostile", "hostile");
    service.wait_for("the run to fail", |s| s.json("/api/policies")["hostile"]["state"] == "failed");
    let file = &service.json("/api/policies")["hostile"];
    assert!(file["error"].as_str().unwrap().contains("trapped in `init`"), "{file}");
    let run = service.run("hostile").unwrap();
    assert_eq!(run["status"], "failed");
    // The calls a run makes as it starts are counted as the later ones are.
    let metrics = service.metrics();
    assert_eq!(metric(&metrics, r#"knas_policy_calls_total{call="instantiate",run="hostile"}"#), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"knas_policy_calls_total{call="init",run="hostile"}"#), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, r#"knas_policy_errors_total{cause="trap",policy="hostile"}"#), Some(1.0), "{metrics}");
    let events = run["events"].as_array().unwrap().len();
    assert!(service.terminate().success());

    // Restarted with the same file, the run is not started (and failed) once more.
    let mut service = Service::start_in(dir.path(), "");
    service.wait_for("the failed run to be listed", |s| s.json("/api/policies")["hostile"]["state"] == "failed");
    let again = service.run("hostile").unwrap();
    assert_eq!(again["events"].as_array().unwrap().len(), events, "no resume, no second failure: {again}");
    assert_eq!(metric(&service.metrics(), r#"knas_policy_calls_total{call="instantiate",run="hostile"}"#), None);
    assert!(service.terminate().success());

    // Other limits for it are a reason to try again (a policy that ran out of memory may
    // have been given more).
    let config = std::fs::read_to_string(dir.path().join("knas.yaml")).unwrap() + "policy-limits:\n  hostile: {memory-mib: 128}\n";
    std::fs::write(dir.path().join("knas.yaml"), config).unwrap();
    let service = Service::start_in(dir.path(), "");
    service.wait_for("the run to be tried again", |s| {
        metric(&s.metrics(), r#"knas_policy_calls_total{call="instantiate",run="hostile"}"#) == Some(1.0)
            && s.json("/api/policies")["hostile"]["state"] == "failed"
    });
    let retried = service.run("hostile").unwrap();
    assert!(retried["events"].as_array().unwrap().len() > events, "{retried}");
}

/// Writes a tiny MNIST-shaped IDX training set (`n` images of noise, labels 0–9) into `dir`.
fn write_idx_training_set(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    let mut images = vec![0u8, 0, 8, 3];
    for dim in [n, 28, 28] {
        images.extend(dim.to_be_bytes());
    }
    images.extend((0..n * 28 * 28).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    let mut labels = vec![0u8, 0, 8, 1];
    labels.extend(n.to_be_bytes());
    labels.extend((0..n).map(|i| (i % 10) as u8));
    std::fs::write(dir.join("train-images-idx3-ubyte"), images).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), labels).unwrap();
}

#[test]
fn a_finished_run_stays_done_when_its_data_is_gone_at_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_idx_training_set(&data, 100);
    let with_data = config(4, 0).replace("reference: 6 }", &format!("reference: 6, dataset: 'mnist:{}' }}", data.display()));
    let mut service = Service::start_in(dir.path(), &with_data);
    service.drop_policy("random", "a");
    service.wait_for("the run to finish", |s| s.run("a").is_some_and(|r| r["status"] == "done"));
    assert!(service.terminate().success());

    // The restart lists the finished run from the store; it needs none of its data.
    std::fs::remove_dir_all(&data).unwrap();
    let service = Service::start_in(dir.path(), "");
    service.wait_for("the finished run's file to be looked at", |s| {
        s.json("/api/policies")["a"].is_object() || s.run("a").is_some_and(|r| r["status"] != "done")
    });
    let run = service.run("a").unwrap();
    assert_eq!(run["status"], "done", "{run}");
    assert_eq!(service.json("/api/policies")["a"]["state"], "loaded");
}

#[test]
fn dropped_policies_run_and_broken_files_are_reported_without_harm() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start_in(dir.path(), &config(8, 1));
    service.drop_policy("random", "random");
    service.wait_for("the run to finish", |s| s.run("random").is_some_and(|r| r["status"] == "done"));
    let run = service.run("random").unwrap();
    assert_eq!(run["recorded"], serde_json::json!({"scores": 8, "trainings": 1}));
    assert!(run["leaderboard"]["winner"]["accuracy"].is_number());
    let metrics = service.metrics();
    assert_eq!(metric(&metrics, r#"knas_evaluations_total{kind="score",outcome="ok",run="random"}"#), Some(8.0));
    assert_eq!(metric(&metrics, r#"knas_policy_loads_total{outcome="loaded",policy="random"}"#), Some(1.0));

    // A broken file: a clear error in the API and a metric; the service carries on.
    std::fs::write(dir.path().join("policies").join("broken.wasm"), b"not wasm at all").unwrap();
    service.wait_for("the broken file to be rejected", |s| s.json("/api/policies")["broken"]["state"] == "rejected");
    let file = &service.json("/api/policies")["broken"];
    assert!(file["error"].as_str().unwrap().contains("not a WebAssembly file"), "{file}");
    let (status, body) = service.get("/api/runs/broken");
    assert_eq!(status, 404);
    assert!(body.contains("not a WebAssembly file"), "{body}");
    let metrics = service.metrics();
    assert_eq!(metric(&metrics, r#"knas_policy_errors_total{cause="load",policy="broken"}"#), Some(1.0));
    // A file name that could forge log lines or labels is ignored, and said so on one line.
    std::fs::write(dir.path().join("policies").join("odd\nname.wasm"), b"x").unwrap();
    service.wait_for("the odd name to be ignored", |s| s.log().contains(r"ignoring") && s.log().contains(r"odd\nname.wasm"));
    assert_eq!(service.get("/healthz").0, 200);

    // A policy that misbehaves at run time fails its own run only.
    std::fs::write(dir.path().join("knas.yaml"), config(8, 1) + "policies:\n  hostile: {act: trap, at: observe}\n").unwrap();
    service.wait_for("the configuration to apply", |s| {
        metric(&s.metrics(), r#"knas_config_reloads_total{outcome="applied"}"#) == Some(1.0)
    });
    service.drop_policy("hostile", "hostile");
    service.wait_for("the hostile run to fail", |s| s.run("hostile").is_some_and(|r| r["status"] == "failed"));
    let hostile = service.run("hostile").unwrap();
    assert!(hostile["last_error"].as_str().unwrap().contains("trapped in `observe`"), "{hostile}");
    assert_eq!(metric(&service.metrics(), r#"knas_policy_errors_total{cause="trap",policy="hostile"}"#), Some(1.0));
    assert_eq!(service.run("random").unwrap()["status"], "done");

    // The run list comes a page at a time, by name, with a cursor to the next page.
    let page = service.json("/api/runs?limit=1");
    assert_eq!(page["runs"].as_array().unwrap().len(), 1, "{page}");
    assert_eq!((&page["runs"][0]["name"], &page["next"]), (&json!("hostile"), &json!("hostile")), "{page}");
    let rest = service.json("/api/runs?after=hostile");
    assert_eq!((&rest["runs"][0]["name"], &rest["runs"][0]["recorded"], &rest["next"]), (&json!("random"), &json!({"scores": 8, "trainings": 1}), &Value::Null));
    assert_eq!(rest["runs"][0]["best_accuracy"], service.run("random").unwrap()["leaderboard"]["winner"]["accuracy"]);
    let (status, body) = service.get("/api/runs?limit=0");
    assert!(status == 400 && body.contains("limit must be between 1 and 1000, got 0"), "{status} {body}");

    // A bad configuration edit is rejected with file:line:column and changes nothing.
    std::fs::write(dir.path().join("knas.yaml"), "search:\n  budgett: 3\n").unwrap();
    service.wait_for("the bad configuration to be rejected", |s| {
        metric(&s.metrics(), r#"knas_config_reloads_total{outcome="rejected"}"#) == Some(1.0)
    });
    assert!(service.log().contains("knas.yaml:2:3: search: unknown field `budgett`"), "{}", service.log());
    assert_eq!(service.get("/healthz").0, 200);
    let events = service.run("hostile").unwrap()["events"].as_array().unwrap().len();
    assert!(service.terminate().success());

    // A run that failed is not re-executed on restart while its policy file is the same.
    std::fs::write(dir.path().join("knas.yaml"), config(8, 1) + "policies:\n  hostile: {act: trap, at: observe}\n").unwrap();
    let mut service = Service::start_in(dir.path(), "");
    service.wait_for("the failed run to be listed", |s| s.json("/api/policies")["hostile"]["state"] == "failed");
    let file = &service.json("/api/policies")["hostile"];
    assert!(file["error"].as_str().unwrap().contains("trapped in `observe`"), "{file}");
    let again = service.run("hostile").unwrap();
    assert_eq!(again["status"], "failed");
    assert_eq!(again["events"].as_array().unwrap().len(), events, "no resume, no second failure: {again}");
    assert!(service.terminate().success());

    // Values out of range are refused when the configuration is read, naming the key.
    for (edit, message) in [
        ("experiment: { channels: -4 }\n", "experiment.channels must be at least 1, got -4"),
        ("limits: { memory-mib: 0 }\n", "limits.memory-mib must be between 1 and 4096, got 0"),
        ("experiment: { train: { learning-rate: 0 } }\n", "experiment.train.learning-rate is out of range: 0"),
    ] {
        std::fs::write(dir.path().join("knas.yaml"), edit).unwrap();
        let out = knas().args(["serve", "--config"]).arg(dir.path().join("knas.yaml")).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(message), "{edit}: {stderr}");
    }
}

#[test]
fn replacing_a_policy_hot_swaps_it_without_losing_or_repeating_work() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_in(dir.path(), &config(300, 1));
    service.drop_policy("evolution", "evo");
    service.wait_for("some progress", |s| s.run("evo").is_some_and(|r| recorded(&r) >= 10));
    // Modules are labelled `file-name@content-hash`.
    let label = |built: &str| {
        let info = knas::policy::contract::inspect(&std::fs::read(policy(built)).unwrap()).unwrap();
        format!("evo@{}", info.short_hash())
    };
    let (evolution, random) = (label("evolution"), label("random"));
    assert_eq!(service.run("evo").unwrap()["policy"], evolution.as_str());

    service.drop_policy("random", "evo");
    service.wait_for("the swap", |s| s.run("evo").is_some_and(|r| r["policy"] == random.as_str()));
    service.wait_for("the run to finish", |s| s.run("evo").is_some_and(|r| r["status"] == "done"));
    let after = service.run("evo").unwrap();
    assert_eq!(after["recorded"], serde_json::json!({"scores": 300, "trainings": 1}));
    assert!(after["events"].as_array().unwrap().iter().any(|e| e["kind"] == "reload"), "{after}");

    // Every evaluation was computed exactly once: the store holds 301 distinct ones and
    // the service computed 301.
    let store = knas::store::RunStore::open(&dir.path().join("runs.db")).unwrap();
    let run = store.run("evo").unwrap().unwrap();
    let evaluations = store.evaluations(run.id).unwrap();
    assert_eq!(evaluations.len(), 301);
    assert!(evaluations.iter().any(|e| e.policy == evolution));
    assert!(evaluations.iter().any(|e| e.policy == random));
    let metrics = service.metrics();
    let computed = metric(&metrics, r#"knas_evaluations_total{kind="score",outcome="ok",run="evo"}"#).unwrap()
        + metric(&metrics, r#"knas_evaluations_total{kind="train",outcome="ok",run="evo"}"#).unwrap();
    assert_eq!(computed, 301.0);
    assert_eq!(metric(&metrics, r#"knas_policy_loads_total{outcome="reloaded",policy="evo"}"#), Some(1.0));
}

#[test]
fn a_run_the_service_drives_is_refused_to_a_second_process() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_in(dir.path(), &config(5000, 0));
    service.drop_policy("random", "a");
    service.wait_for("run a to progress", |s| s.run("a").is_some_and(|r| recorded(&r) >= 2));
    let second = knas()
        .args(["search", "--name", "a", "--budget", "5000", "--top-k", "0", "--policy"])
        .arg(policy("random"))
        .arg("--store")
        .arg(dir.path().join("runs.db"))
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&second.get_output().stderr).into_owned();
    assert!(stderr.contains(r#"run "a" is being driven by another knas process (pid "#), "{stderr}");
    let before = recorded(&service.run("a").unwrap());
    service.wait_for("run a to go on", |s| s.run("a").is_some_and(|r| r["status"] == "running" && recorded(&r) > before));
}

/// A run another process drives waits, reported once; the service takes it over once that
/// process lets go, without the policy file being touched.
#[test]
fn a_run_another_process_drives_is_taken_over_once_it_is_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let store = knas::store::RunStore::open(&dir.path().join("runs.db")).unwrap();
    let lease = store.lease("a").unwrap();
    let service = Service::start_in(dir.path(), &config(5000, 0));
    service.drop_policy("random", "a");
    service.wait_for("run a to be refused", |s| s.json("/api/policies")["a"]["state"] == "rejected");
    let error = service.json("/api/policies")["a"]["error"].as_str().unwrap().to_owned();
    assert!(error.contains(r#"run "a" is being driven by another knas process (pid "#) && error.contains("asks for it again every"), "{error}");
    // Asked for again (twice, at least) while held: the same refusal is counted and logged
    // once, each retry counted as waiting.
    service.wait_for("two refused retries", |s| {
        metric(&s.metrics(), r#"knas_policy_loads_total{outcome="waiting",policy="a"}"#).is_some_and(|n| n >= 2.0)
    });
    assert_eq!(metric(&service.metrics(), r#"knas_policy_loads_total{outcome="rejected",policy="a"}"#), Some(1.0));
    assert_eq!(service.log().matches("is being driven by another knas process").count(), 1, "{}", service.log());
    assert!(service.run("a").is_none(), "the service left the run alone while it was held");
    drop(lease);
    service.wait_for("run a to be taken over", |s| s.run("a").is_some_and(|r| r["status"] == "running" && recorded(&r) >= 2));
    assert_eq!(service.json("/api/policies")["a"]["state"], "loaded");
}

#[test]
fn deleting_stops_a_run_sigterm_exits_cleanly_and_a_restart_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Service::start_in(dir.path(), &config(5000, 0));
    service.drop_policy("random", "a");
    service.drop_policy("random", "b");
    service.wait_for("both runs to progress", |s| {
        s.run("a").is_some_and(|r| recorded(&r) >= 5) && s.run("b").is_some_and(|r| recorded(&r) >= 5)
    });
    std::fs::remove_file(dir.path().join("policies").join("a.wasm")).unwrap();
    service.wait_for("run a to stop", |s| s.run("a").is_some_and(|r| r["status"] == "stopped"));
    let a_stopped = recorded(&service.run("a").unwrap());
    // Proof by the neighbour's progress, not by waiting: b takes several more turns…
    let b_now = recorded(&service.run("b").unwrap());
    service.wait_for("run b to go on", |s| s.run("b").is_some_and(|r| recorded(&r) >= b_now + 5));
    // …and a took none of them.
    assert_eq!(recorded(&service.run("a").unwrap()), a_stopped, "a stopped run takes no more turns");

    assert!(service.terminate().success(), "clean exit on SIGTERM");
    let store = knas::store::RunStore::open(&dir.path().join("runs.db")).unwrap();
    let b = store.run("b").unwrap().unwrap();
    assert_eq!(b.status, knas::store::RunStatus::Stopped);
    let b_before = store.evaluations(b.id).unwrap();
    assert!(b_before.len() >= 5);
    drop(store);

    let service = Service::start_in(dir.path(), "");
    service.wait_for("run b to resume", |s| {
        s.run("b").is_some_and(|r| r["status"] == "running" && recorded(&r) > b_before.len() as u64)
    });
    assert_eq!(service.run("a").unwrap()["status"], "stopped", "a's file is gone: it stays stopped");
    let store = knas::store::RunStore::open(&dir.path().join("runs.db")).unwrap();
    let b_after = store.evaluations(b.id).unwrap();
    assert_eq!(&b_after[..b_before.len()], &b_before[..], "results from before the restart are intact");
    assert!(store.events(b.id).unwrap().iter().any(|e| e.kind == "resume"));
}

#[test]
fn a_panic_while_stepping_a_run_fails_that_run_only() {
    let dir = tempfile::tempdir().unwrap();
    // The third evaluation the service makes panics, as a libtorch error or a bug would.
    let faults = [("FAILPOINTS", "search::evaluate=2*off->1*panic(injected fault)->off")];
    let service = Service::start_with(dir.path(), &config(6, 0), &faults);
    service.drop_policy("random", "a");
    service.drop_policy("random", "b");
    service.wait_for("both runs to end", |s| {
        ["a", "b"].iter().all(|n| s.run(n).is_some_and(|r| r["status"] == "done" || r["status"] == "failed"))
    });
    let (a, b) = (service.run("a").unwrap(), service.run("b").unwrap());
    let (failed, done) = if a["status"] == "failed" { (a, b) } else { (b, a) };
    assert_eq!(done["status"], "done", "the other run is unaffected: {done}");
    assert_eq!(done["recorded"]["scores"], 6);
    let error = failed["last_error"].as_str().unwrap();
    assert!(error.contains("the host failed while stepping the run: injected fault"), "{error}");
    assert!(failed["events"].as_array().unwrap().iter().any(|e| e["kind"] == "error"), "{failed}");
    assert_eq!(service.get("/healthz").0, 200, "the service goes on serving");
}

#[test]
fn a_dead_file_watcher_stops_the_runs_before_the_service_exits() {
    let dir = tempfile::tempdir().unwrap();
    // The watcher fails 20 s in (ticks are 50 ms), with a long run under way by then.
    let faults = [("FAILPOINTS", "watcher::tick=400*off->return")];
    let mut service = Service::start_with(dir.path(), &config(100_000, 0), &faults);
    service.drop_policy("random", "a");
    service.wait_for("the run to start", |s| s.run("a").is_some_and(|r| r["status"] == "running"));
    let status = service.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the process exits with an error");
    let log = service.log();
    assert!(log.contains("the file watcher failed: injected watcher failure"), "{log}");
    // Recorded as stopped, as at SIGTERM: nothing is left marked running.
    let store = knas::store::RunStore::open(&dir.path().join("runs.db")).unwrap();
    assert_eq!(store.run("a").unwrap().unwrap().status, knas::store::RunStatus::Stopped);
}

#[test]
fn a_dead_compute_thread_is_never_reported_healthy() {
    let dir = tempfile::tempdir().unwrap();
    let faults = [("FAILPOINTS", "scheduler::loop=3*off->panic(compute thread killed)")];
    let mut service = Service::start_with(dir.path(), &config(50, 0), &faults);
    service.drop_policy("random", "a");
    let status = service.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the process exits with an error");
    let log = service.log();
    assert!(log.contains("the compute thread died: compute thread killed"), "{log}");
}

#[test]
fn sigterm_during_a_long_training_stops_at_once_and_the_restart_redoes_only_it() {
    let dir = tempfile::tempdir().unwrap();
    // Two scores, then a training of many epochs: seconds to tens of seconds.
    let long = "listen: 127.0.0.1:0\npolicy-dir: policies\nstore: runs.db\ndevice: cpu\nthreads: 1\ndebounce-ms: 200\n\
                experiment: { channels: 4, cells: 1, score-batch: 4, limit: 512, reference: 6, train: { epochs: 60 } }\n\
                search: { budget: 2, top-k: 1, max-batch: 4 }\n";
    let mut service = Service::start_in(dir.path(), long);
    service.drop_policy("random", "r");
    service.wait_for("the training to start", |s| {
        metric(&s.metrics(), r#"knas_evaluations_total{kind="score",outcome="ok",run="r"}"#) == Some(2.0)
    });
    // Some steps into the training, well before its end.
    service.wait_for("training steps", |s| metric(&s.metrics(), r#"knas_training_steps_total{run="r"}"#).is_some_and(|n| n >= 5.0));
    let progress = metric(&service.metrics(), r#"knas_training_progress_ratio{run="r"}"#).unwrap();
    assert!(progress > 0.0 && progress < 0.5, "progress {progress}");
    let asked = Instant::now();
    assert!(service.terminate().success(), "clean exit on SIGTERM");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(10), "stopped {took:?} after SIGTERM, mid-training");
    let store = knas::store::RunStore::open(&dir.path().join("runs.db")).unwrap();
    let run = store.run("r").unwrap().unwrap();
    assert_eq!(run.status, knas::store::RunStatus::Stopped);
    assert_eq!(store.spent(run.id).unwrap(), knas::run::Budget { scores: 2, trainings: 0 }, "nothing half-done recorded");
    drop(store);
    // The restart recomputes only the training (the run keeps its settings, 60 epochs):
    // both scores come from the store.
    let service = Service::start_in(dir.path(), "");
    service.wait_for("the run to finish", |s| s.run("r").is_some_and(|r| r["status"] == "done"));
    let metrics = service.metrics();
    assert_eq!(metric(&metrics, r#"knas_evaluations_total{kind="train",outcome="ok",run="r"}"#), Some(1.0));
    assert_eq!(metric(&metrics, r#"knas_evaluations_total{kind="score",outcome="ok",run="r"}"#), None, "no score computed again");
    // The redone training counted every one of its steps: as many as the epochs times
    // the steps per epoch.
    assert_eq!(metric(&metrics, r#"knas_training_progress_ratio{run="r"}"#), Some(1.0));
    let steps = metric(&metrics, r#"knas_training_steps_total{run="r"}"#).unwrap();
    assert!(steps >= 60.0 && steps % 60.0 == 0.0, "{steps} steps");
}

#[test]
fn half_written_files_are_never_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_in(dir.path(), &config(4, 0));
    let bytes = std::fs::read(policy("random")).unwrap();
    let target = dir.path().join("policies").join("half.wasm");
    std::fs::write(&target, &bytes[..bytes.len() / 2]).unwrap();
    service.wait_for("the partial file to be judged", |s| s.json("/api/policies")["half"]["state"] == "rejected");
    assert!(service.run("half").is_none(), "no run from half a file");
    let error = service.json("/api/policies")["half"]["error"].as_str().unwrap().to_owned();
    assert!(error.contains("malformed WebAssembly"), "{error}");
    // The copy completes: now it loads.
    std::fs::write(&target, &bytes).unwrap();
    service.wait_for("the complete file to run", |s| s.run("half").is_some_and(|r| r["status"] == "done"));
}

/// A real Prometheus scrapes the service; its HTTP API must return knas series.
#[test]
fn prometheus_scrapes_the_service() {
    let Some(prometheus) = crate::common::tool("prometheus") else { return };
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_in(dir.path(), &config(6, 1));
    service.drop_policy("random", "random");
    service.wait_for("the run to finish", |s| s.run("random").is_some_and(|r| r["status"] == "done"));
    let server = crate::common::Prometheus::start(&prometheus, dir.path(), &service.address);
    let value = server.query_until("knas_evaluations_total", |result| !result.is_empty());
    assert!(value.iter().any(|s| s["metric"]["run"] == "random"), "{value:?}");
    let up = server.query_until(r#"up{job="knas"}"#, |r| r.first().is_some_and(|s| s["value"][1] == "1"));
    assert_eq!(up[0]["value"][1], "1");

    // Prometheus's own linter finds nothing to say about the names, types and help texts
    // (it reads the exposition on stdin and prints one line per problem).
    let Some(promtool) = crate::common::tool("promtool") else { return };
    let mut lint = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut lint.stdin.take().unwrap(), service.metrics().as_bytes()).unwrap();
    let lint = lint.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&lint.stdout), String::from_utf8_lossy(&lint.stderr));
    assert!(lint.status.success() && said.trim().is_empty(), "promtool check metrics: {said}");
}

/// Every row of the store's evaluations table, each column as SQLite holds it.
fn evaluation_rows(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut statement = conn.prepare("SELECT * FROM evaluations ORDER BY run_id, seq").unwrap();
    let columns = statement.column_count();
    statement
        .query_map([], |row| {
            let values: rusqlite::Result<Vec<rusqlite::types::Value>> = (0..columns).map(|i| row.get(i)).collect();
            Ok(format!("{:?}", values?))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// `value` with every non-integer number written to 12 digits (see [`findings`]).
fn rounded(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => Value::String(format!("{:.11e}", n.as_f64().unwrap_or_default())),
        Value::Array(items) => Value::Array(items.iter().map(rounded).collect()),
        Value::Object(fields) => Value::Object(fields.iter().map(|(k, v)| (k.clone(), rounded(v))).collect()),
        other => other.clone(),
    }
}

/// What a run found, independent of timing: each evaluation's candidate, fidelity and results.
fn findings(db: &Path, run: &str) -> Vec<String> {
    let store = knas::store::RunStore::open(db).unwrap();
    let run = store.run(run).unwrap().unwrap();
    let mut found: Vec<String> = store
        .evaluations(run.id)
        .unwrap()
        .iter()
        // To 12 digits: BLAS kernels may round the last bit differently in another process.
        .map(|e| format!("{} {:?} {:?} {:?}", e.candidate, e.fidelity, e.score.map(|s| format!("{s:.11e}")), e.accuracy))
        .collect();
    found.sort();
    found
}

#[test]
fn twenty_kills_at_random_moments_lose_nothing_and_change_nothing() {
    use rand::{Rng, SeedableRng};
    let settings = config(600, 3);

    // The same search, uninterrupted.
    let calm = tempfile::tempdir().unwrap();
    let mut service = Service::start_in(calm.path(), &settings);
    service.drop_policy("evolution", "evo");
    service.wait_for("the calm run to finish", |s| s.run("evo").is_some_and(|r| r["status"] == "done"));
    let expected = service.run("evo").unwrap()["leaderboard"].clone();
    assert!(service.terminate().success());

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("runs.db");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(20);
    let mut service = Service::start_in(dir.path(), &settings);
    service.drop_policy("evolution", "evo");
    let (mut kills, mut during_work, mut rows_checked) = (0u64, 0usize, 0usize);
    // Kill points by progress, not by time (the same on a fast or a slow machine): 17
    // while scoring, 5–30 evaluations apart, then 3 during the trainings that follow the
    // 600 scores; each a few random milliseconds past its point.
    let mut point = 0;
    while kills < 20 {
        point = if kills < 17 { point + rng.random_range(5..=30u64) } else { 600 + (kills - 17) };
        service.wait_for("the kill point", |s| s.run("evo").is_some_and(|r| recorded(&r) >= point || r["status"] == "done"));
        std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        let before = evaluation_rows(&db);
        let working = service.run("evo").is_some_and(|r| r["status"] == "running");
        service.kill();
        kills += 1;
        during_work += usize::from(working);
        let after = evaluation_rows(&db);
        assert!(after.len() >= before.len(), "kill {kills}: {} rows before, {} after", before.len(), after.len());
        assert_eq!(&after[..before.len()], &before[..], "kill {kills}: a recorded row changed or vanished");
        rows_checked += before.len();
        service = Service::start_in(dir.path(), "");
        service.wait_for("the run to be loaded", |s| metric(&s.metrics(), r#"knas_policy_loads_total{outcome="loaded",policy="evo"}"#).is_some());
    }
    service.wait_for("the run to finish", |s| s.run("evo").is_some_and(|r| r["status"] == "done"));
    assert!(during_work >= 17, "only {during_work} of 20 kills came while the run was working");
    assert_eq!(rounded(&service.run("evo").unwrap()["leaderboard"]), rounded(&expected), "the same leaderboard as without kills");
    assert!(service.terminate().success());

    let conn = rusqlite::Connection::open(&db).unwrap();
    let integrity: String = conn.query_row("PRAGMA integrity_check", [], |row| row.get(0)).unwrap();
    assert_eq!(integrity, "ok");
    let duplicates: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM (SELECT 1 FROM evaluations GROUP BY run_id, candidate, fidelity HAVING COUNT(*) > 1)",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(duplicates, 0, "an evaluation recorded twice");
    let (found, expected) = (findings(&db, "evo"), findings(&calm.path().join("runs.db"), "evo"));
    let only = |a: &[String], b: &[String]| a.iter().filter(|x| !b.contains(x)).cloned().collect::<Vec<_>>();
    assert_eq!(found.len(), expected.len(), "only after kills: {:?}\nonly without: {:?}", only(&found, &expected), only(&expected, &found));
    assert_eq!(found, expected, "only after kills: {:?}\nonly without: {:?}", only(&found, &expected), only(&expected, &found));
    eprintln!("chaos: {kills} kills ({during_work} while working), {rows_checked} rows checked, 0 duplicates");
}

/// Fuzzing the HTTP API: random paths and query strings under every route. Never a 5xx,
/// never a dropped connection, and the service stays healthy. Cases: `KNAS_FUZZ_CASES`,
/// else 200.
#[test]
fn fuzzed_api_paths_and_queries_get_clear_answers() {
    use proptest::prelude::*;
    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_in(dir.path(), &config(2, 0));
    service.drop_policy("random", "random");
    service.wait_for("a run to exist", |s| s.run("random").is_some());
    let client = reqwest::blocking::Client::new();
    let segment = prop_oneof![Just("random".to_owned()), "[a-zA-Z0-9._~-]{0,12}", "(%[0-9A-Fa-f]{2}|[a-z]|%|\\.\\.){0,8}", "\\PC{0,6}"];
    let prefix = prop_oneof![Just("/api/runs/"), Just("/api/runs"), Just("/api/policies"), Just("/metrics"), Just("/healthz"), Just("/"), Just("/api/")];
    // The keys the API reads (`limit`, `after`) as often as others, with numbers of every
    // size and sign, repeats and percent-escapes (broken UTF-8 included) as values.
    let key = prop_oneof![Just("limit".to_owned()), Just("after".to_owned()), "[a-z_]{0,8}"];
    let value = prop_oneof!["-?[0-9]{1,25}", "(%[0-9A-Fa-f]{2}|[-a-z0-9.]){0,10}", Just(String::new())];
    let pair = (key, prop::option::of(value)).prop_map(|(key, value)| value.map_or(key.clone(), |value| format!("{key}={value}")));
    let query = prop::option::of(prop::collection::vec(pair, 1..4).prop_map(|pairs| pairs.join("&")));
    let mut runner = proptest::test_runner::TestRunner::new(crate::common::fuzz_config());
    runner
        .run(&(prefix, segment, query), |(prefix, segment, query)| {
            let mut url = format!("http://{}{prefix}{segment}", service.address);
            if let Some(query) = query {
                url = format!("{url}?{query}");
            }
            // Text that is no URL at all never reaches the service.
            let Ok(request) = client.get(&url).build() else { return Ok(()) };
            let response = client.execute(request).map_err(|e| TestCaseError::fail(format!("{url}: {e}")))?;
            let status = response.status();
            prop_assert!(!status.is_server_error(), "{url}: {status}");
            if status.is_client_error() {
                prop_assert!(!response.text().unwrap_or_default().is_empty(), "{url}: {status} without a message");
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(service.get("/healthz").0, 200);
}
