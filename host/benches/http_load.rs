//! Closed-loop HTTP load: `--clients` clients, each on its own keep-alive connection,
//! calling `--url` again the moment it answers, for `--seconds`; prints one JSON report
//! (requests, errors, latency percentiles). The load generator of
//! `host/benches/api_load.py`, which starts the service and measures the search beside it:
//! a Python generator took most of a core of the two it shared with the service, and opened
//! a new connection per request, so it measured itself more than the service.
//!
//! ```sh
//! cargo bench -p knas --bench http_load -- --url 'http://127.0.0.1:8080/api/runs?limit=100' --clients 200 --seconds 30
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// What every client asks for.
    #[arg(long)]
    url: String,
    /// Concurrent clients, each waiting for its answer before asking again.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// How long the load lasts.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Threads of the generator's runtime (the service's machine is shared).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// An answer must start with this to count as a success.
    #[arg(long, default_value = "")]
    expect_prefix: String,
    /// Cargo passes `--bench` to every bench target.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: usize,
    /// The first few distinct error messages.
    examples: std::collections::BTreeSet<String>,
}

impl Tally {
    fn error(&mut self, message: String) {
        self.errors += 1;
        if self.examples.len() < 3 {
            self.examples.insert(message);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
    let report = runtime.block_on(load(&args))?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

async fn load(args: &Args) -> anyhow::Result<serde_json::Value> {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        // One connection per client, kept alive, as a dashboard or a scraper would.
        let http = reqwest::Client::builder().pool_max_idle_per_host(1).timeout(Duration::from_secs(30)).build()?;
        let (url, prefix, stop) = (args.url.clone(), args.expect_prefix.clone().into_bytes(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let asked = Instant::now();
                let outcome = match http.get(&url).send().await {
                    Ok(response) => {
                        let status = response.status();
                        match response.bytes().await {
                            Ok(body) if status.is_success() && body.starts_with(&prefix) => None,
                            Ok(_) if status.is_success() => Some("unexpected body".to_owned()),
                            Ok(_) => Some(format!("status {status}")),
                            Err(e) => Some(e.to_string()),
                        }
                    }
                    Err(e) => Some(e.to_string()),
                };
                tally.latencies.push(asked.elapsed());
                if let Some(message) = outcome {
                    tally.error(message);
                    // A service that is down answers at once: do not spin on it.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            tally
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Tally::default();
    for client in clients {
        let tally = client.await?;
        all.latencies.extend(tally.latencies);
        all.errors += tally.errors;
        for example in tally.examples {
            if all.examples.len() < 3 {
                all.examples.insert(example);
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.latencies.sort();
    let ms = |q: f64| -> Option<f64> {
        let n = all.latencies.len();
        (n > 0).then(|| all.latencies[((q * n as f64) as usize).min(n - 1)].as_secs_f64() * 1e3)
    };
    Ok(serde_json::json!({
        "clients": args.clients,
        "seconds": elapsed,
        "requests": all.latencies.len(),
        "requests_per_second": all.latencies.len() as f64 / elapsed,
        "errors": all.errors,
        "error_examples": all.examples,
        "latency_ms": { "p50": ms(0.5), "p99": ms(0.99), "max": ms(1.0) },
    }))
}
