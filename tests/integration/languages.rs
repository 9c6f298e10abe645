//! Policies written in Python (componentize-py) and JavaScript (ComponentizeJS): built by
//! `knas policy build`, run by `knas search` and `knas serve` under the same sandbox as
//! Rust ones, with the deny-all WASI their tool-chains need; and a hostile fixture in each
//! language, contained case by case.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::{Value, json};

use crate::common::{TINY, knas, tool, workspace};

/// The Python and JavaScript components (the examples and the hostile fixtures), built
/// once per test process by the real `knas policy build`; `None` when the tool-chains are
/// not installed (and not required).
fn foreign_policies() -> Option<PathBuf> {
    static BUILT: OnceLock<Option<PathBuf>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let componentize_py = tool("componentize-py")?;
            tool("node")?;
            let componentize_js = workspace().join(".tools").join("componentize-js");
            if !componentize_js.join("node_modules/@bytecodealliance/componentize-js/package.json").is_file() {
                assert!(std::env::var("KNAS_REQUIRE_TOOLS").as_deref() != Ok("1"), "ComponentizeJS is required but not installed: run scripts/test.sh");
                eprintln!("NOTE: ComponentizeJS is not installed; skipping (scripts/install-test-tools.sh installs it)");
                return None;
            }
            let out = workspace().join("target").join("test-foreign-policies");
            let status = std::process::Command::new(env!("CARGO_BIN_EXE_knas"))
                .current_dir(workspace())
                .env("KNAS_COMPONENTIZE_PY", componentize_py)
                .env("KNAS_COMPONENTIZE_JS", componentize_js)
                .args(["policy", "build", "examples/python-evolution", "tests/guests/python-hostile", "examples/js-annealing", "tests/guests/js-hostile"])
                .arg("--out-dir")
                .arg(&out)
                .status()
                .unwrap();
            assert!(status.success(), "knas policy build failed for the Python and JavaScript policies");
            Some(out)
        })
        .clone()
}

fn search(policy: &std::path::Path, store: &std::path::Path, extra: &[&str]) -> std::process::Output {
    knas()
        .args(["search", "--policy"])
        .arg(policy)
        .arg("--store")
        .arg(store)
        .args(["--limit", "64", "--epochs", "1", "--reference", "6", "--format", "json", "--log", "info"])
        .args(TINY)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_python_policy_completes_a_search() {
    let Some(dir) = foreign_policies() else { return };
    let inspect = knas().args(["policy", "inspect", "--format", "json"]).arg(dir.join("python-evolution.wasm")).output().unwrap();
    let info: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let imports: Vec<&str> = info[0]["imports"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
    assert!(imports.iter().any(|i| i.starts_with("wasi:filesystem/")) && imports.iter().any(|i| i.starts_with("knas:policy/host")), "{imports:?}");

    let store = tempfile::tempdir().unwrap();
    let out = search(&dir.join("python-evolution.wasm"), &store.path().join("runs.db"), &["--budget", "12", "--top-k", "2", "--params", r#"{"population": 4, "sample": 2}"#]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["recorded"], json!({"scores": 12, "trainings": 2}), "{report}");
    assert_eq!(report["leaderboard"]["trained"].as_array().unwrap().len(), 2);
    // Its log goes through host.log, attributed to it.
    assert!(stderr.contains("regularised evolution: population 4, sample 2") && stderr.contains("python-evolution@"), "{stderr}");

    // Unknown parameters are its own error, named.
    let out = search(&dir.join("python-evolution.wasm"), &store.path().join("other.db"), &["--params", r#"{"populace": 4}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("returned an error from `init`: unknown parameters: populace"));
    // A count that is not one is refused naming the key, not raised as a Python exception.
    let out = search(&dir.join("python-evolution.wasm"), &store.path().join("third.db"), &["--params", r#"{"top_k": -1}"#]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("returned an error from `init`: top_k: expected a whole number, 0 or more, got -1"), "{stderr}");
}

#[test]
fn a_javascript_policy_completes_a_search() {
    let Some(dir) = foreign_policies() else { return };
    let store = tempfile::tempdir().unwrap();
    let out = search(&dir.join("js-annealing.wasm"), &store.path().join("runs.db"), &["--budget", "16", "--top-k", "2", "--params", r#"{"patience": 5}"#]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["recorded"], json!({"scores": 16, "trainings": 2}), "{report}");
    assert!(stderr.contains("simulated annealing: T 0.5 -> 0.01, restart after 5 steps") && stderr.contains("js-annealing@"), "{stderr}");
    let out = search(&dir.join("js-annealing.wasm"), &store.path().join("other.db"), &["--params", r#"{"t0": -1}"#]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("returned an error from `init`: need 0 < t1 <= t0"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = search(&dir.join("js-annealing.wasm"), &store.path().join("third.db"), &["--params", r#"{"top_k": -1}"#]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("returned an error from `init`: top_k: expected a whole number, 0 or more, got -1"), "{stderr}");
    // Strings compare as text ("10" <= "2"): refused, not an annealing that heats up.
    let out = search(&dir.join("js-annealing.wasm"), &store.path().join("fourth.db"), &["--params", r#"{"t0": "2", "t1": "10"}"#]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(r#"returned an error from `init`: t0: expected a number, got "2""#), "{stderr}");
}

/// Every hostile case in one process per language (each component is compiled once):
/// each is contained with a message naming the policy, and the same runtime goes on.
#[test]
fn hostile_python_is_contained() {
    hostile("python-hostile", "raise", "ValueError: out of ideas");
}

#[test]
fn hostile_javascript_is_contained() {
    hostile("js-hostile", "throw", "Error: out of ideas");
}

fn hostile(fixture: &str, raise: &str, raised: &str) {
    use knas::config::SearchSettings;
    use knas::engine::Engine;
    use knas::policy::PolicyRuntime;
    use knas::run::{Experiment, PolicyLimits};
    use knas::search::{Search, Step};
    use knas::store::RunStore;

    let Some(dir) = foreign_policies() else { return };
    let store_dir = tempfile::tempdir().unwrap();
    let store = RunStore::open(&store_dir.path().join("runs.db")).unwrap();
    let runtime = PolicyRuntime::new().unwrap();
    let experiment = Experiment { channels: 2, cells: 1, score_batch: 4, limit: Some(64), reference: 6, ..Experiment::default() };
    let mut engine = Engine::new(&experiment, tch::Device::Cpu).unwrap();
    knas::search::anchor(&mut engine, &store, &mut |_, _| {}).unwrap();
    let module = runtime.load_file(&dir.join(format!("{fixture}.wasm"))).unwrap();
    let settings = SearchSettings { score_budget: 2, top_k: 0, max_batch: 2 };
    let run = |name: &str, params: Value| -> Result<Vec<knas::store::EvaluationRecord>, String> {
        let spec = settings.spec(params, PolicyLimits::default());
        let mut search = Search::start(&store, store.lease(name).unwrap(), &runtime, &module, name, &experiment, &spec, &mut ()).map_err(|e| e.to_string())?;
        loop {
            match search.step(&engine, &store, &mut ()) {
                Ok(Step::Continue) => {}
                Ok(_) => break,
                Err(error) => return Err(error.to_string()),
            }
        }
        Ok(store.evaluations(search.run().id).unwrap())
    };
    let fails = |name: &str, params: Value, expected: &[&str]| {
        let error = run(name, params).expect_err(name);
        assert!(error.contains(&format!("{fixture}@")), "{name}: {error}");
        assert!(expected.iter().any(|e| error.contains(e)), "{name}: {error:?} says none of {expected:?}");
    };
    fails("spin", json!({"act": "spin"}), &["ran out of fuel", "ran past its 2000 ms deadline"]);
    fails("bomb", json!({"act": "allocate", "mib": 300}), &["exceeded its 64 MiB memory limit in `propose`"]);
    fails("raise", json!({"act": raise, "message": "out of ideas"}), &[raised]);
    if fixture.starts_with("python") {
        // No preopened directory: the file does not exist for it.
        fails("open", json!({"act": "open", "path": "/etc/passwd"}), &["FileNotFoundError", "No such file"]);
    }
    if fixture.starts_with("python") {
        // A sleep of a million seconds ends at once; the policy's clock moved by it.
        let started = std::time::Instant::now();
        let slept = run("sleep", json!({"act": "sleep", "seconds": 1_000_000})).unwrap();
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{:?}", started.elapsed());
        assert_eq!(slept[0].candidate.to_string(), "|avg_pool_3x3~0|+|avg_pool_3x3~0|avg_pool_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|avg_pool_3x3~2|");
    }
    // Printing is logged, capped per call; the run goes on.
    assert_eq!(run("print", json!({"act": "print", "lines": 1000})).unwrap().len(), 1);
    // Clocks and random are the same on every run: the same candidate twice.
    let first = run("time-1", json!({"act": "time"})).unwrap();
    let second = run("time-2", json!({"act": "time"})).unwrap();
    assert_eq!(first[0].candidate, second[0].candidate);
    // Each edge read the clocks afresh (a chance match of two real clocks is then 5^-6).
    let ops: std::collections::BTreeSet<_> = first[0].candidate.to_string().split('|').filter_map(|op| op.split_once('~')).map(|(op, _)| op.to_owned()).collect();
    assert!(ops.len() > 1, "{}", first[0].candidate);
    // The runtime still runs a well-behaved run.
    assert_eq!(run("fine", json!({})).unwrap().len(), 1);
}

/// A component importing a WASI interface outside the allow-list (here `wasi:http`) is
/// refused at load time, naming the interface.
#[test]
fn a_wasi_interface_outside_the_allow_list_is_refused_by_name() {
    let Some(dir) = foreign_policies() else { return };
    let mut bytes = std::fs::read(dir.join("python-evolution.wasm")).unwrap();
    // Same length, so the component stays well-formed: an import of wasi:http instead.
    let (from, to) = (b"wasi:sockets/tcp@0.2.", b"wasi:http/typesx@0.2.");
    let mut replaced = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + to.len()].copy_from_slice(to);
            replaced += 1;
        }
    }
    assert!(replaced > 0);
    let file = tempfile::tempdir().unwrap();
    let path = file.path().join("http.wasm");
    std::fs::write(&path, &bytes).unwrap();
    let out = knas().args(["policy", "inspect"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("imports `wasi:http/typesx@0.2.") && stderr.contains("which knas does not provide"), "{stderr}");
}

/// Dropped into the service's watched folder, a Python policy drives its run; replaced by
/// a JavaScript one mid-run, the run goes on with it to the end, nothing evaluated twice.
#[test]
fn python_and_javascript_policies_run_and_hot_swap_in_the_service() {
    let Some(dir) = foreign_policies() else { return };
    let work = tempfile::tempdir().unwrap();
    let service = crate::serve::Service::start_in(work.path(), &crate::serve::config(400, 1));
    let drop = |file: &str| {
        let staging = work.path().join("run.staging");
        std::fs::copy(dir.join(file), &staging).unwrap();
        std::fs::rename(&staging, work.path().join("policies").join("run.wasm")).unwrap();
    };
    drop("python-evolution.wasm");
    service.wait_for("the Python policy's first scores", |s| s.run("run").is_some_and(|r| r["recorded"]["scores"].as_u64() >= Some(5)));
    let python = service.json("/api/runs/run")["policy"].as_str().unwrap().to_owned();
    drop("js-annealing.wasm");
    service.wait_for("the run, finished by the JavaScript policy", |s| s.run("run").is_some_and(|r| r["status"] == "done"));
    let run = service.json("/api/runs/run");
    assert!(python.starts_with("run@") && run["policy"] != python.as_str(), "{python} then {}", run["policy"]);
    assert_eq!(run["recorded"], json!({"scores": 400, "trainings": 1}), "{run}");
    let events: Vec<&str> = run["events"].as_array().unwrap().iter().map(|e| e["kind"].as_str().unwrap()).collect();
    assert!(events.contains(&"reload"), "{events:?}");
    // Nothing evaluated twice: the evaluations computed, whatever their outcome, are the
    // ones recorded (the store's unique index alone would keep the count above right).
    let metrics = service.metrics();
    let computed: f64 = metrics
        .lines()
        .filter(|line| line.starts_with("knas_evaluations_total{") && line.contains(r#"run="run""#))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(computed, 401.0, "{metrics}");
}
