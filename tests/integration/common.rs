//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use assert_cmd::Command;

/// Settings that make every network tiny and every dataset small.
pub const TINY: &[&str] = &["--channels", "2", "--cells", "1", "--batch-size", "4", "--threads", "1", "--device", "cpu"];

/// [`TINY`] for `knas train`, which has no scoring batch.
pub const TINY_TRAINING: &[&str] = &["--channels", "2", "--cells", "1", "--threads", "1", "--device", "cpu"];

/// The `knas` binary under test.
pub fn knas() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_knas"));
    cmd.env_remove("KNAS_LOG");
    cmd
}

/// Parses stdout as JSON lines.
pub fn json_lines(stdout: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("host/ has a parent").to_owned()
}

/// Where the test build of the guests puts cargo's output.
fn guest_target() -> PathBuf {
    workspace().join("target").join("guests")
}

/// Every guest the tests use: the built-in policies, the worked example and the fixtures.
const GUESTS: &[&str] =
    &["policies/random", "policies/evolution", "policies/pruning", "examples/hill-climb", "tests/guests/hostile", "tests/guests/wrong-version", "tests/guests/contract-0-1"];

/// The component for policy `name`, built (once per test process) by the real
/// `knas policy build`.
pub fn policy(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        let out = workspace().join("target").join("test-policies");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_knas"))
            .current_dir(workspace())
            .args(["policy", "build", "--profile", "policy", "--allow-contract-mismatch", "--out-dir"])
            .arg(&out)
            .arg("--target-dir")
            .arg(guest_target())
            .args(GUESTS)
            .status()
            .expect("knas runs");
        assert!(status.success(), "knas policy build failed for the test guests");
        out
    });
    dir.join(format!("{name}.wasm"))
}

/// The core module cargo produced for a guest crate (before it became a component).
pub fn core_module(lib_name: &str) -> PathBuf {
    policy("random");
    guest_target().join("wasm32-unknown-unknown").join("policy").join(format!("{lib_name}.wasm"))
}

/// An external tool the project's scripts install (`scripts/test.sh`). When it is missing:
/// a failure if `KNAS_REQUIRE_TOOLS=1` (as the scripts set), otherwise a notice and `None`.
pub fn tool(name: &str) -> Option<PathBuf> {
    let local = workspace().join(".tools").join("bin").join(name);
    let found = if local.is_file() {
        Some(local)
    } else {
        std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|p| p.join(name)).find(|p| p.is_file()))
    };
    if found.is_none() {
        assert!(std::env::var("KNAS_REQUIRE_TOOLS").as_deref() != Ok("1"), "{name} is required but not installed: run scripts/test.sh");
        eprintln!("NOTE: {name} is not installed; skipping the test that needs it (scripts/test.sh installs it)");
    }
    found
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A throwaway Prometheus server scraping its targets every second.
pub struct Prometheus {
    child: std::process::Child,
    pub address: String,
}

impl Prometheus {
    pub fn start(binary: &Path, dir: &Path, target: &str) -> Prometheus {
        Prometheus::start_scraping(binary, dir, &[target])
    }

    /// A server scraping several targets (one job).
    pub fn start_scraping(binary: &Path, dir: &Path, targets: &[&str]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: knas\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={address}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let server = Prometheus { child, address };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !reqwest::blocking::get(format!("http://{}/-/ready", server.address)).is_ok_and(|r| r.status().is_success()) {
            assert!(std::time::Instant::now() < deadline, "prometheus did not become ready");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        server
    }

    /// Evaluates an instant query; the `data.result` array.
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let url = format!("http://{}/api/v1/query", self.address);
        let response: serde_json::Value = reqwest::blocking::Client::new()
            .get(url)
            .query(&[("query", expr)])
            .send()
            .and_then(|r| r.json())
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        assert_eq!(response["status"], "success", "query {expr} failed: {response}");
        response["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// Re-evaluates `expr` until `done` accepts the result (or 60 s pass).
    pub fn query_until(&self, expr: &str, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let result = self.query(expr);
            if done(&result) {
                return result;
            }
            assert!(std::time::Instant::now() < deadline, "query {expr} never satisfied the test: {result:?}");
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Cases per fuzz target: `KNAS_FUZZ_CASES`, else 200. Failures are not persisted into the tree.
pub use knas_policy_sdk::testing::fuzz_config;
