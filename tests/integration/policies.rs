//! Policies end to end: the built-in ones, the worked example, and a hostile suite where
//! every sandbox limit is tested obeyed and violated. All against real `.wasm` components
//! built by the real `knas policy build`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use predicates::prelude::*;
use serde_json::{Value, json};

use crate::common::{TINY, knas, policy};

/// A store in a fresh temporary folder.
fn store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.db");
    (dir, path)
}

/// `knas search` with tiny settings.
fn search(policy_name: &str, store: &Path, extra: &[&str]) -> assert_cmd::Command {
    search_as("json", policy_name, store, extra)
}

/// As [`search`], with the report in `format`. Callers may append arguments.
fn search_as(format: &str, policy_name: &str, store: &Path, extra: &[&str]) -> assert_cmd::Command {
    let mut cmd = knas();
    cmd.args(["search", "--policy"])
        .arg(policy(policy_name))
        .arg("--store")
        .arg(store)
        .args(["--limit", "64", "--epochs", "1", "--reference", "6", "--format", format])
        .args(TINY)
        .args(extra);
    cmd
}

fn report(assert: assert_cmd::assert::Assert) -> Value {
    serde_json::from_slice(&assert.get_output().stdout).expect("a JSON report")
}

#[test]
fn random_policy_runs_knas_coarse_to_fine() {
    let (_dir, store) = store();
    let r = report(search("random", &store, &["--budget", "12", "--top-k", "2", "--max-batch", "5"]).assert().success());
    // Both budgets spent: the host ends the run without asking the policy again.
    assert_eq!(r["finish"], "budget-spent");
    assert_eq!(r["recorded"], json!({"scores": 12, "trainings": 2}));
    let trained = r["leaderboard"]["trained"].as_array().unwrap();
    assert_eq!(trained.len(), 2);
    // The trained ones are the two best-scored of the twelve.
    let top: Vec<&Value> = r["leaderboard"]["top_scores"].as_array().unwrap()[..2].iter().map(|s| &s["candidate"]).collect();
    for t in trained {
        assert!(top.contains(&&t["candidate"]), "{t} is not among the top scores {top:?}");
        assert!((0.0..=1.0).contains(&t["accuracy"].as_f64().unwrap()), "{t}");
    }
    assert_eq!(r["leaderboard"]["winner"]["candidate"], trained[0]["candidate"]);
}

#[test]
fn evolution_policy_spends_its_budget_then_trains_the_fittest() {
    let (_dir, store) = store();
    let r = report(
        search("evolution", &store, &["--budget", "25", "--top-k", "1", "--params", r#"{"population": 5, "sample": 2}"#])
            .assert()
            .success(),
    );
    assert_eq!(r["recorded"], json!({"scores": 25, "trainings": 1}));
    assert_eq!(r["leaderboard"]["trained"][0]["candidate"], r["leaderboard"]["top_scores"][0]["candidate"]);
}

#[test]
fn evolution_breeds_from_no_architecture_over_its_limits() {
    let (_dir, path) = store();
    // No network has at most one parameter: no member may be a parent, so every child is a
    // random draw, not a mutation (which differs from its parent in one edge).
    let params = r#"{"population": 5, "sample": 5, "max_params": 1}"#;
    let shown = search_as("table", "evolution", &path, &["--budget", "30", "--top-k", "0", "--params", params]).assert().success();
    let text = String::from_utf8_lossy(&shown.get_output().stdout).into_owned();
    assert!(text.contains("Best by score (nothing was trained): |"), "{text}");
    let store = knas::store::RunStore::open(&path).unwrap();
    let run = store.run("evolution").unwrap().unwrap();
    let edges = |arch: &str| arch.split('|').filter(|edge| edge.contains('~')).map(str::to_owned).collect::<Vec<_>>();
    let scored: Vec<Vec<String>> = store.evaluations(run.id).unwrap().iter().map(|e| edges(&e.candidate.to_string())).collect();
    assert_eq!(scored.len(), 30);
    let neighbours = (5..scored.len())
        .filter(|&i| scored[..i].iter().any(|earlier| earlier.iter().zip(&scored[i]).filter(|(a, b)| a != b).count() == 1))
        .count();
    assert!(neighbours < 5, "{neighbours} of 25 children are one edge from an earlier architecture: {scored:?}");
}

#[test]
fn pruning_policy_prunes_the_supernet_to_one_architecture() {
    let (_dir, path) = store();
    let pure = ["--budget", "200", "--top-k", "2", "--max-batch", "30", "--params", r#"{"refine": false}"#];
    let r = report(search("pruning", &path, &pure).assert().success());
    assert_eq!(r["finish"], "policy-done");
    // Four rounds take every edge from 5 ops to 1, each scoring every one-op removal:
    // 30 + 24 + 18 + 12. Then the result is scored and trained.
    assert_eq!(r["recorded"], json!({"scores": 85, "trainings": 1}));
    let winner = r["leaderboard"]["winner"]["candidate"].as_str().unwrap();
    assert!(!winner.contains(','), "a single architecture: {winner}");
    let scored: Vec<&str> = r["leaderboard"]["top_scores"].as_array().unwrap().iter().map(|s| s["candidate"].as_str().unwrap()).collect();
    assert!(scored.iter().any(|c| c.contains(',')), "supernets were scored: {scored:?}");
    // `top_k: 0` trains nothing, whatever the run's training budget.
    let (_dir, path) = store();
    let none = ["--budget", "200", "--top-k", "2", "--max-batch", "30", "--params", r#"{"refine": false, "top_k": 0}"#];
    let r = report(search("pruning", &path, &none).assert().success());
    assert_eq!((&r["finish"], &r["recorded"]), (&json!("policy-done"), &json!({"scores": 85, "trainings": 0})));
    // With the default local search, the rest of the budget climbs from the pruned cell.
    let (_dir, path) = store();
    let r = report(search("pruning", &path, &["--budget", "120", "--top-k", "2", "--max-batch", "30"]).assert().success());
    assert_eq!(r["recorded"], json!({"scores": 120, "trainings": 2}));
    // Single architectures are scored with the gradient norm, supernets without it; the
    // best-scored cell is trained, and so is the one with the smallest gradient.
    let s = knas::store::RunStore::open(&path).unwrap();
    let run = s.run("pruning").unwrap().unwrap();
    let evaluations = s.evaluations(run.id).unwrap();
    let (mut best, mut tamest) = (None::<(f64, knas::space::Candidate)>, None::<(f64, knas::space::Candidate)>);
    for e in evaluations.iter().filter(|e| e.fidelity == knas::run::Fidelity::Score) {
        let norm = e.measures.as_ref().unwrap().get(&knas::measures::Measure::GradNorm).copied();
        assert_eq!(norm.is_some(), e.candidate.is_single(), "{}: {norm:?}", e.candidate);
        if let (Some(score), Some(Some(norm))) = (e.score, norm) {
            best = best.filter(|b| b.0 >= score).or(Some((score, e.candidate)));
            tamest = tamest.filter(|t| t.0 <= norm).or(Some((norm, e.candidate)));
        }
    }
    let trained: Vec<_> = evaluations.iter().filter(|e| e.fidelity == knas::run::Fidelity::Train).map(|e| e.candidate).collect();
    let (best, tamest) = (best.unwrap().1, tamest.unwrap().1);
    assert!(trained.contains(&best) && trained.contains(&tamest), "trained {trained:?}, best {best}, tamest {tamest}");
}

#[test]
fn a_contract_0_1_policy_still_runs() {
    let (_dir, store) = store();
    let r = report(search("contract-0-1", &store, &["--budget", "5", "--top-k", "1"]).assert().success());
    assert_eq!(r["recorded"], json!({"scores": 5, "trainings": 1}));
    let out = knas().args(["policy", "inspect", "--format", "json"]).arg(policy("contract-0-1")).assert().success();
    let info: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(info[0]["contract_version"], "0.1.0");
}

#[test]
fn policy_parameters_that_do_not_fit_name_the_key() {
    let (_a, first) = store();
    search("evolution", &first, &["--budget", "3", "--params", r#"{"population": "many"}"#])
        .assert()
        .failure()
        .stderr(predicate::str::contains("population: invalid type: string \"many\""));
    let (_b, second) = store();
    search("random", &second, &["--budget", "3", "--params", r#"{"rank_by": "accuracy"}"#])
        .assert()
        .failure()
        .stderr(predicate::str::contains("rank_by: unknown ranking \"accuracy\""));
    let (_c, third) = store();
    search("evolution", &third, &["--budget", "3", "--params", r#"{"populaton": 3}"#])
        .assert()
        .failure()
        .stderr(predicate::str::contains("unknown field `populaton`"));
    // The run is left failed, not running.
    let out = knas().args(["runs", "--format", "json", "--store"]).arg(&third).assert().success();
    let runs: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(runs[0]["status"], "failed", "{runs}");
}

#[test]
fn evaluations_carry_every_measure_and_the_search_reports_its_standing_in_a_table() {
    let (dir, store) = store();
    // A table with made-up accuracies for every architecture the run may meet.
    let table = dir.path().join("table.jsonl");
    let lines: Vec<String> = (0..knas::space::NUM_ARCHS)
        .map(|i| json!({"arch": knas::space::Arch::from_index(i).unwrap().to_string(), "acc": (i % 97) as f64}).to_string())
        .collect();
    std::fs::write(&table, lines.join("\n")).unwrap();
    let r = report(search("random", &store, &["--budget", "6", "--top-k", "2", "--table"]).arg(&table).assert().success());
    let published = &r["published"];
    assert_eq!(published["field"], "acc");
    let winner = r["leaderboard"]["winner"]["candidate"].as_str().unwrap();
    let index = winner.parse::<knas::space::Arch>().unwrap().index();
    assert_eq!(published["winner"]["accuracy"].as_f64().unwrap(), (index % 97) as f64);
    // Its rank in the table: one after every more accurate row (ties share the best rank).
    let better = (0..knas::space::NUM_ARCHS).filter(|i| i % 97 > index % 97).count() as u64;
    assert_eq!(published["winner"]["rank"].as_u64(), Some(better + 1), "{published}");
    assert_eq!(r["leaderboard"]["winner"]["published_accuracy"], published["winner"]["accuracy"]);
    let s = knas::store::RunStore::open(&store).unwrap();
    let run = s.run("random").unwrap().unwrap();
    let scored: Vec<_> = s.evaluations(run.id).unwrap().into_iter().filter(|e| e.fidelity == knas::run::Fidelity::Score).collect();
    assert_eq!(scored.len(), 6);
    for e in &scored {
        let measures = e.measures.as_ref().unwrap();
        assert!(measures.len() >= 3, "{measures:?}");
        assert!(e.params.unwrap() > 0 && e.flops.unwrap() > 0);
    }
    assert_eq!(s.published(run.id).unwrap().accuracy.len(), 6);
    knas()
        .args(["runs", "random", "--store"])
        .arg(&store)
        .assert()
        .success()
        .stdout(predicate::str::contains("published accuracy"));
}

#[test]
fn the_worked_example_policy_runs() {
    let (_dir, store) = store();
    let r = report(search("hill-climb", &store, &["--budget", "30", "--top-k", "1"]).assert().success());
    assert_eq!(r["recorded"], json!({"scores": 30, "trainings": 1}));
    assert!(r["policy"].as_str().unwrap().starts_with("hill-climb@"));
}

#[test]
fn runs_lists_the_store_and_shows_a_leaderboard() {
    let (_dir, store) = store();
    search("random", &store, &["--budget", "4", "--top-k", "1", "--name", "first"]).assert().success();
    let out = knas().args(["runs", "--format", "json", "--store"]).arg(&store).assert().success();
    let runs: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 1);
    assert_eq!(runs[0]["name"], "first");
    assert_eq!(runs[0]["status"], "done");
    assert_eq!(runs[0]["recorded"]["scores"], 4);
    knas()
        .args(["runs", "first", "--store"])
        .arg(&store)
        .assert()
        .success()
        .stdout(predicate::str::contains("Leaderboard"))
        .stdout(predicate::str::contains("done"));
    knas().args(["runs", "nope", "--store"]).arg(&store).assert().failure().stderr(predicate::str::contains("no run named \"nope\""));
}

#[test]
fn a_finished_run_is_not_repeated() {
    let (_dir, store) = store();
    search("random", &store, &["--budget", "5", "--top-k", "1"]).assert().success();
    let again = report(search("random", &store, &["--budget", "5", "--top-k", "1"]).assert().success());
    assert_eq!(again["finish"], "already-done");
    assert_eq!(again["computed_now"], json!({"scores": 0, "trainings": 0}));
    // Same name, different settings: refused, nothing touched.
    search("random", &store, &["--budget", "6", "--top-k", "1"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already exists with different settings"));
    // Refused before any data is loaded: this dataset folder does not exist.
    search("random", &store, &["--budget", "5", "--top-k", "1", "--dataset", "cifar10:no-such-folder"])
        .assert()
        .failure()
        .stderr(predicate::str::contains("already exists with different settings (experiment)"));
}

#[test]
fn kill_dash_nine_then_resume_loses_nothing_and_rescores_nothing() {
    let (_dir, store) = store();
    // Settings that take several seconds, so the kill lands mid-way.
    let args = ["--budget", "150", "--top-k", "1", "--channels", "8", "--cells", "2", "--batch-size", "16", "--threads", "1"];
    let command = |args: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_knas"));
        cmd.args(["search", "--device", "cpu", "--limit", "64", "--format", "json", "--policy"])
            .arg(policy("evolution"))
            .arg("--store")
            .arg(&store)
            .args(args);
        cmd
    };
    let mut child = command(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until some results are recorded, then kill without warning.
    let deadline = Instant::now() + Duration::from_secs(120);
    let recorded = loop {
        std::thread::sleep(Duration::from_millis(50));
        let n = knas::store::RunStore::open(&store)
            .ok()
            .and_then(|s| s.run("evolution").ok().flatten().and_then(|r| s.evaluations(r.id).ok()))
            .map_or(0, |e| e.len());
        if n >= 20 {
            break n;
        }
        assert!(Instant::now() < deadline, "the search recorded nothing in time");
        assert!(child.try_wait().unwrap().is_none(), "the search ended before it could be killed");
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = {
        let s = knas::store::RunStore::open(&store).unwrap();
        let run = s.run("evolution").unwrap().unwrap();
        s.evaluations(run.id).unwrap()
    };
    assert!(before.len() >= recorded && before.len() < 151, "killed mid-way: {}", before.len());

    let r = report(assert_cmd::Command::from_std(command(&args)).assert().success());
    assert_eq!(r["recorded"], json!({"scores": 150, "trainings": 1}));
    let scored_before = before.iter().filter(|e| e.fidelity == knas::run::Fidelity::Score).count() as u64;
    assert_eq!(r["computed_now"]["scores"].as_u64().unwrap(), 150 - scored_before, "nothing re-scored");
    let after = {
        let s = knas::store::RunStore::open(&store).unwrap();
        let run = s.run("evolution").unwrap().unwrap();
        let events = s.events(run.id).unwrap();
        assert!(events.iter().any(|e| e.kind == "resume"), "{events:?}");
        s.evaluations(run.id).unwrap()
    };
    assert_eq!(&after[..before.len()], &before[..], "results from before the kill are intact");
}

/// Runs the hostile fixture with `params`; returns the assertion on its exit.
fn hostile(params: Value, extra: &[&str]) -> assert_cmd::assert::Assert {
    let (_dir, store) = store();
    search("hostile", &store, &["--budget", "3", "--top-k", "0", "--params", &params.to_string()]).args(extra).assert()
}

fn fails_with(params: Value, extra: &[&str], message: &str) {
    hostile(params, extra).failure().stderr(predicate::str::contains(message)).stderr(predicate::str::contains("policy hostile@"));
}

#[test]
fn endless_loops_run_out_of_fuel_or_time() {
    hostile(json!({"act": "spin", "iterations": 1_000_000}), &[]).success();
    fails_with(json!({"act": "spin", "iterations": u64::MAX}), &[], "ran out of fuel (2000000000 instructions) in `propose`");
    fails_with(
        json!({"act": "spin", "iterations": u64::MAX}),
        &["--policy-fuel", "1000000000000000", "--policy-timeout-ms", "300"],
        "ran past its 300 ms deadline in `propose`",
    );
    fails_with(json!({"act": "spin", "iterations": u64::MAX, "at": "init"}), &[], "in `init`");
}

#[test]
fn memory_bombs_hit_the_memory_limit() {
    hostile(json!({"act": "allocate", "mib": 16}), &[]).success();
    fails_with(json!({"act": "allocate", "mib": 300}), &[], "exceeded its 64 MiB memory limit in `propose`");
    hostile(json!({"act": "allocate", "mib": 100}), &["--policy-memory-mib", "256"]).success();
}

#[test]
fn panics_traps_and_errors_are_reported_with_their_message() {
    fails_with(json!({"act": "panic", "message": "out of ideas"}), &[], "panicked in `propose`");
    hostile(json!({"act": "panic", "message": "out of ideas"}), &[]).failure().stderr(predicate::str::contains("out of ideas"));
    fails_with(json!({"act": "trap"}), &[], "trapped in `propose`");
    fails_with(json!({"act": "error", "message": "no candidates left", "at": "observe"}), &[], "returned an error from `observe`: no candidates left");
    fails_with(json!({"act": "error", "message": "bad params", "at": "init"}), &[], "returned an error from `init`: bad params");
}

#[test]
fn invalid_proposals_are_rejected_before_any_compute() {
    let propose = |ops: Value, train: bool| json!({"act": "propose", "candidates": [{"ops": ops, "train": train}]});
    fails_with(propose(json!([[3], [1], [0], [2], [9], [3]]), false), &[], "candidate 0, edge 4 (1→3): op index 9 is out of range 0..5");
    fails_with(propose(json!([[3], [1], [], [2], [4], [3]]), false), &[], "candidate 0, edge 2 (1→2): empty op set");
    fails_with(propose(json!([[3], [1], [0], [2], [4]]), false), &[], "candidate 0 lists 5 edges; the space has 6");
    fails_with(propose(json!([[3], [1], [0, 1], [2], [4], [3]]), true), &[], "training needs one op per edge");
    // Training with no training budget.
    fails_with(propose(json!([[3], [1], [0], [2], [4], [3]]), true), &[], "asks for 0 new scores and 1 new trainings, but only 3 and 0 remain");
    let epochs = |n: u32| json!({"act": "propose", "candidates": [{"ops": [[3], [1], [0], [2], [4], [3]], "train": true, "epochs": n}]});
    fails_with(epochs(11), &[], "candidate 0: 11 epochs asked, more than max-epochs 10");
    fails_with(epochs(0), &[], "candidate 0: a training of 0 epochs");
    // A supernet score is fine.
    hostile(propose(json!([[0, 1, 2, 3, 4], [1], [0], [2], [4], [3]]), false), &[]).success();
}

#[test]
fn batch_size_and_budget_limits() {
    hostile(json!({"act": "batch", "count": 3}), &["--max-batch", "3"]).success();
    fails_with(json!({"act": "batch", "count": 4}), &["--max-batch", "3"], "4 candidates in one batch, more than max-batch 3");
    fails_with(json!({"act": "batch", "count": 5}), &["--max-batch", "8"], "asks for 5 new scores and 0 new trainings, but only 3 and 0 remain");
}

#[test]
fn a_policy_that_makes_no_progress_is_stopped() {
    fails_with(json!({"act": "repeat"}), &[], "made no progress: 100 proposals in a row");
}

#[test]
fn log_floods_are_capped_and_long_records_truncated() {
    hostile(json!({"act": "log", "count": 1000, "bytes": 8}), &["--log", "info"])
        .success()
        .stderr(predicate::str::contains("the rest were dropped"));
    hostile(json!({"act": "log", "count": 1, "bytes": 10000}), &["--log", "info"])
        .success()
        .stderr(predicate::str::contains("[truncated]"));
    // A budget of one record's length still writes a long record, truncated (the mark and
    // any escapes count in the record's length).
    let text = "\n".repeat(5000);
    let out = hostile(json!({"act": "log", "count": 1, "bytes": 0, "text": text}), &["--log", "info", "--policy-log-bytes-per-minute", "4096"]).success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    let record = stderr.lines().find(|l| l.contains(r"\n\n\n")).unwrap_or_else(|| panic!("no record written:\n{stderr}"));
    assert!(record.contains("… [truncated]") && record.matches(r"\n").count() < 2048, "{record}");
    // Over time: 100 records of 1,000 bytes against 10,000 bytes a minute.
    let out = hostile(json!({"act": "log", "count": 100, "bytes": 1000}), &["--log", "info", "--policy-log-bytes-per-minute", "10000"]).success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    let kept = stderr.lines().filter(|l| l.contains(&"x".repeat(1000))).count();
    assert!((9..=11).contains(&kept), "{kept} records kept of 100:\n{stderr}");
    assert!(stderr.contains(&format!("policy logged more than 10000 bytes in a minute; {} records were dropped", 100 - kept)), "{stderr}");
}

#[test]
fn a_policy_cannot_forge_log_lines() {
    let forged = "fine\n2026-01-01T00:00:00Z ERROR knas: forged line\u{1b}[31m";
    let out = hostile(json!({"act": "log", "count": 1, "bytes": 0, "text": forged}), &["--log", "info"]).success();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert!(stderr.contains(r"fine\n2026-01-01T00:00:00Z ERROR knas: forged line\u{1b}[31m"), "{stderr}");
    assert!(!stderr.lines().any(|line| line.starts_with("2026-01-01")), "{stderr}");
}

#[test]
fn files_that_are_not_policies_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"#!/bin/sh\necho hi\n").unwrap();
    let refuse = |file: &Path, message: &str| {
        knas()
            .args(["search", "--budget", "1", "--policy"])
            .arg(file)
            .arg("--store")
            .arg(dir.path().join("runs.db"))
            .args(TINY)
            .assert()
            .failure()
            .stderr(predicate::str::contains(message));
    };
    refuse(&junk, "junk.wasm cannot be loaded: not a WebAssembly file (it starts with bytes 23 21 2f 62)");
    refuse(&policy("wrong-version"), "built against contract knas:policy@9.0.0, which this host does not run (it runs 0.2.0, 0.1.0)");
    refuse(&crate::common::core_module("knas_policy_random"), "a core WebAssembly module, not a component");
    refuse(&dir.path().join("missing.wasm"), "missing.wasm cannot be loaded: cannot read it");
    refuse(&dir.path().join("missing.wasm"), "and no built-in policy of that name (built in: random)");
}

#[test]
fn random_names_the_policy_built_into_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let out = knas()
        .current_dir(dir.path())
        .args(["search", "--policy", "random", "--budget", "3", "--top-k", "1", "--limit", "64", "--reference", "6", "--store", "runs.db", "--format", "json"])
        .args(TINY)
        .assert()
        .success();
    let report: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(report["run"], "random");
    assert!(report["policy"].as_str().unwrap().starts_with("random@"), "{report}");
    assert_eq!(report["recorded"], json!({"scores": 3, "trainings": 1}));
    // A file of that name comes first.
    std::fs::write(dir.path().join("random"), b"not a policy").unwrap();
    knas()
        .current_dir(dir.path())
        .args(["search", "--policy", "random", "--name", "file", "--budget", "1", "--store", "runs.db"])
        .args(TINY)
        .assert()
        .failure()
        .stderr(predicate::str::contains("random cannot be loaded: not a WebAssembly file"));
    // It is the same policy `knas policy build` makes of policies/random.
    let built = knas().args(["policy", "inspect", "--format", "json"]).arg(policy("random")).assert().success();
    let built: Value = serde_json::from_slice(&built.get_output().stdout).unwrap();
    assert_eq!(report["policy"], format!("random@{}", &built[0]["sha256"].as_str().unwrap()[..8]));
}

#[test]
fn inspect_shows_the_contract_and_the_sdk() {
    let out = knas().args(["policy", "inspect", "--format", "json"]).arg(policy("evolution")).assert().success();
    let info: Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(info[0]["contract_version"], knas::policy::CONTRACT_VERSION);
    assert_eq!(info[0]["sdk"], format!("knas-policy-sdk {}", env!("CARGO_PKG_VERSION")));
    let imports: Vec<&str> = info[0]["imports"].as_array().unwrap().iter().map(|i| i.as_str().unwrap()).collect();
    assert!(imports.iter().all(|i| i.starts_with("knas:policy/")), "{imports:?}");
}

/// In one process: a run whose policy traps fails with its results kept, and the same
/// runtime and store go on to complete another run.
#[test]
fn a_failing_policy_leaves_the_host_and_other_runs_intact() {
    use knas::config::SearchSettings;
    use knas::engine::Engine;
    use knas::policy::PolicyRuntime;
    use knas::run::{Experiment, PolicyLimits};
    use knas::search::{Search, Step};
    use knas::store::{RunStatus, RunStore};

    let (_dir, path) = store();
    let store = RunStore::open(&path).unwrap();
    let runtime = PolicyRuntime::new().unwrap();
    let experiment = Experiment { channels: 2, cells: 1, score_batch: 4, limit: Some(64), reference: 6, ..Experiment::default() };
    let mut engine = Engine::new(&experiment, tch::Device::Cpu).unwrap();
    knas::search::anchor(&mut engine, &store, &mut |_, _| {}).unwrap();
    let settings = SearchSettings { score_budget: 4, top_k: 0, max_batch: 2 };

    let hostile = runtime.load_file(&policy("hostile")).unwrap();
    let trap_late = json!({"act": "trap", "at": "observe"});
    let mut bad = Search::start(&store, store.lease("bad").unwrap(), &runtime, &hostile, "bad", &experiment, &settings.spec(trap_late, PolicyLimits::default()), &mut ()).unwrap();
    let error = loop {
        match bad.step(&engine, &store, &mut ()) {
            Ok(Step::Continue) => {}
            Ok(other) => panic!("the hostile run stopped: {other:?}"),
            Err(e) => break e,
        }
    };
    assert_eq!(error.cause(), "trap");
    bad.fail(&store, &error).unwrap();

    let good = runtime.load_file(&policy("random")).unwrap();
    let mut ok = Search::start(&store, store.lease("good").unwrap(), &runtime, &good, "good", &experiment, &settings.spec(json!({}), PolicyLimits::default()), &mut ()).unwrap();
    while ok.step(&engine, &store, &mut ()).unwrap() == Step::Continue {}

    let bad_run = store.run("bad").unwrap().unwrap();
    assert_eq!(bad_run.status, RunStatus::Failed);
    assert!(bad_run.error.unwrap().contains("trapped in `observe`"));
    assert_eq!(store.evaluations(bad_run.id).unwrap().len(), 1, "the evaluation made before the trap is kept");
    let good_run = store.run("good").unwrap().unwrap();
    assert_eq!(good_run.status, RunStatus::Done);
    assert_eq!(store.evaluations(good_run.id).unwrap().len(), 4);
}


/// What a test driving a `Search` directly needs: a store, a policy runtime, and an
/// anchored engine of tiny networks.
struct Direct {
    _dir: tempfile::TempDir,
    store: knas::store::RunStore,
    runtime: knas::policy::PolicyRuntime,
    experiment: knas::run::Experiment,
    engine: knas::engine::Engine,
}

fn direct() -> Direct {
    let (_dir, path) = store();
    let store = knas::store::RunStore::open(&path).unwrap();
    let runtime = knas::policy::PolicyRuntime::new().unwrap();
    let experiment = knas::run::Experiment { channels: 2, cells: 1, score_batch: 4, limit: Some(64), reference: 6, ..Default::default() };
    let mut engine = knas::engine::Engine::new(&experiment, tch::Device::Cpu).unwrap();
    knas::search::anchor(&mut engine, &store, &mut |_, _| {}).unwrap();
    Direct { _dir, store, runtime, experiment, engine }
}

/// A run with 10,000 recorded results restarts by replaying them in bounded `observe`
/// calls, each inside the per-call limits, and a policy's checkpoint lets the next restart
/// skip what it already knows.
#[test]
fn long_histories_replay_in_chunks_and_checkpoints_shorten_restarts() {
    use knas::config::SearchSettings;
    use knas::run::{Fidelity, PolicyLimits};
    use knas::search::Search;
    use knas::space::{Arch, Candidate};
    use knas::store::NewEvaluation;

    let Direct { _dir, store, runtime, experiment, engine } = direct();
    let module = runtime.load_file(&policy("evolution")).unwrap();
    let limits = PolicyLimits::default();
    let spec = SearchSettings { score_budget: 10_010, top_k: 0, max_batch: 1 }.spec(json!({}), limits);
    let (run, _) = store.begin_run("long", &module.label(), &experiment, &spec).unwrap();
    let archs = Arch::sample(10_000, 7);
    for (i, arch) in archs.iter().enumerate() {
        let m = NewEvaluation { score: Some(-(i as f64) / 1e4), params: Some(1000), flops: Some(1000), seconds: 0.0, ..NewEvaluation::default() };
        store.record(run.id, &Candidate::from(*arch), Fidelity::Score, "old@0", &m).unwrap();
    }
    let mut search = Search::start(&store, store.lease("long").unwrap(), &runtime, &module, "long", &experiment, &spec, &mut ()).unwrap();
    let (calls, _) = search.policy_calls();
    let chunks = 10_000usize.div_ceil(knas::search::REPLAY_CHUNK) as u64;
    assert!(calls >= chunks, "the history went in {calls} calls");
    // One more evaluation: the policy is asked for its checkpoint and it is stored.
    search.step(&engine, &store, &mut ()).unwrap();
    let (seq, _, state) = store.checkpoint(run.id).unwrap().expect("a checkpoint");
    assert_eq!(seq, 10_001);
    assert!(!state.is_empty());
    drop(search);
    // The restart restores the checkpoint and replays nothing.
    let search = Search::start(&store, store.lease("long").unwrap(), &runtime, &module, "long", &experiment, &spec, &mut ()).unwrap();
    let (calls, _) = search.policy_calls();
    assert!(calls <= 3, "init and restore, no replay: {calls} calls");
}

/// A run of the hostile fixture with `params`, started on a history of 300 scores another
/// module wrote: long enough for a checkpoint to be asked for after one more result.
fn hostile_on_a_long_history(direct: &Direct, name: &str, params: serde_json::Value) -> (i64, impl Fn() -> knas::search::Search) {
    use knas::config::SearchSettings;
    use knas::run::{Fidelity, PolicyLimits};
    use knas::space::{Arch, Candidate};
    use knas::store::NewEvaluation;

    let Direct { store, runtime, experiment, .. } = direct;
    let module = runtime.load_file(&policy("hostile")).unwrap();
    let spec = SearchSettings { score_budget: 400, top_k: 0, max_batch: 1 }.spec(params, PolicyLimits::default());
    let (run, _) = store.begin_run(name, &module.label(), experiment, &spec).unwrap();
    for (i, arch) in Arch::sample(300, 3).iter().enumerate() {
        let m = NewEvaluation { score: Some(i as f64), seconds: 0.0, ..NewEvaluation::default() };
        store.record(run.id, &Candidate::from(*arch), Fidelity::Score, "old@0", &m).unwrap();
    }
    let start = move || knas::search::Search::start(store, store.lease(name).unwrap(), runtime, &module, name, experiment, &spec, &mut ()).expect("the run starts");
    (run.id, start)
}

/// A policy that panics restoring its checkpoint (say, a new version handed the state of
/// another) does not fail the run: the host replays the whole history instead.
#[test]
fn a_checkpoint_that_cannot_be_restored_falls_back_to_replaying_the_history() {
    let direct = direct();
    let (run, start) = hostile_on_a_long_history(&direct, "restored", json!({"act": "panic", "message": "not my state", "at": "restore"}));
    let Direct { store, engine, .. } = &direct;
    let mut search = start();
    search.step(engine, store, &mut ()).unwrap();
    assert!(store.checkpoint(run).unwrap().is_some(), "the policy keeps a checkpoint");
    drop(search);
    // The history is replayed instead.
    let mut search = start();
    search.step(engine, store, &mut ()).unwrap();
    assert_eq!(store.evaluations(run).unwrap().len(), 302, "every result kept, one more recorded");
}

/// A policy that cannot save its state (its `checkpoint` returns an error) keeps its run:
/// a restart replays the history instead.
#[test]
fn a_policy_that_cannot_checkpoint_keeps_its_run() {
    let direct = direct();
    let (run, start) = hostile_on_a_long_history(&direct, "unsaved", json!({"act": "error", "message": "no state to give", "at": "checkpoint"}));
    let Direct { store, engine, .. } = &direct;
    let mut search = start();
    search.step(engine, store, &mut ()).expect("the step goes on without a checkpoint");
    search.step(engine, store, &mut ()).expect("and so does the next");
    assert!(store.checkpoint(run).unwrap().is_none());
    assert_eq!(store.evaluations(run).unwrap().len(), 302);
    drop(search);
    let mut search = start();
    search.step(engine, store, &mut ()).unwrap();
    assert_eq!(store.evaluations(run).unwrap().len(), 303, "every result kept, one more recorded");
}

/// Stopped while training the first candidate of a batch, a search still records the
/// batch's later scores that were measured ahead in parallel.
#[test]
fn an_interrupted_batch_keeps_the_scores_measured_ahead() {
    use knas::config::SearchSettings;
    use knas::run::PolicyLimits;
    use knas::search::{Search, SearchError, SearchObserver};

    /// Asks to stop once a training has taken a step.
    #[derive(Default)]
    struct StopInTraining(bool);
    impl SearchObserver for StopInTraining {
        fn training_step(&mut self, _done: usize, _total: usize) {
            self.0 = true;
        }
        fn interrupted(&self) -> bool {
            self.0
        }
    }

    let Direct { _dir, store, runtime, experiment, mut engine } = direct();
    engine.set_workers(2);
    let module = runtime.load_file(&policy("hostile")).unwrap();
    // Trained for three epochs: more than one optimiser step, so there is one to stop at.
    let raw = |op: u32, train: bool| json!({"ops": [[op], [3], [3], [op], [3], [3]], "train": train, "epochs": 3});
    let params = json!({"act": "propose", "candidates": [raw(1, true), raw(2, false), raw(3, false)]});
    let spec = SearchSettings { score_budget: 10, top_k: 1, max_batch: 4 }.spec(params, PolicyLimits::default());
    let mut search = Search::start(&store, store.lease("stopped").unwrap(), &runtime, &module, "stopped", &experiment, &spec, &mut ()).unwrap();
    let error = search.step(&engine, &store, &mut StopInTraining::default()).unwrap_err();
    assert!(matches!(error, SearchError::Interrupted), "{error}");
    let recorded = store.evaluations(search.run().id).unwrap();
    let scores = recorded.iter().filter(|r| r.fidelity == knas::run::Fidelity::Score).count();
    assert_eq!((recorded.len(), scores), (2, 2), "the two scores measured ahead, not the cancelled training");
}

/// Fuzzing `.wasm` bytes: random edits of a real policy and random bytes are loaded. No
/// panic; every refusal names the file. Edits that still pass the contract check are
/// compiled too (a few per run: compiling is the slow part). Cases: `KNAS_FUZZ_CASES`,
/// else 200.
#[test]
fn fuzzed_policy_files_load_or_are_refused_by_name() {
    use proptest::prelude::*;
    let runtime = knas::policy::PolicyRuntime::new().unwrap();
    let valid = std::fs::read(policy("random")).unwrap();
    // Splices: a window of the file replaced by other bytes (none: a cut; past the end: cut short).
    let splices = prop::collection::vec((any::<prop::sample::Index>(), 0usize..16, prop::collection::vec(any::<u8>(), 0..8)), 1..4);
    let compiled = std::cell::Cell::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(crate::common::fuzz_config());
    runner
        .run(&(splices, prop::collection::vec(any::<u8>(), 0..64), any::<prop::sample::Index>()), |(splices, noise, end)| {
            let mut bytes = valid.clone();
            for (at, len, with) in splices {
                let at = at.index(bytes.len());
                let end = (at + len).min(bytes.len());
                bytes.splice(at..end, with);
            }
            let cut = bytes[..end.index(bytes.len() + 1)].to_vec();
            for input in [&bytes, &cut, &noise] {
                if knas::policy::contract::inspect(input).is_ok() && compiled.get() >= 3 {
                    continue;
                }
                compiled.set(compiled.get() + u32::from(knas::policy::contract::inspect(input).is_ok()));
                if let Err(error) = runtime.load_bytes("fuzzed", input) {
                    prop_assert!(error.to_string().contains("fuzzed"), "{}", error);
                }
            }
            Ok(())
        })
        .unwrap();
}
