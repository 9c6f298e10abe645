//! Deployment: the Helm chart (rendered by a real helm), the Dockerfile, and the Grafana
//! dashboard (every query evaluated by a real Prometheus scraping a real `knas serve`).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value as Yaml;

use crate::common::{Prometheus, policy, tool, workspace};
use crate::serve::{Service, config};

fn chart() -> PathBuf {
    workspace().join("charts").join("knas")
}

fn helm(helm: &Path, args: &[&str]) -> std::process::Output {
    Command::new(helm).args(args).output().expect("helm runs")
}

/// `helm template` with `values`; every rendered object.
fn render(helm_bin: &Path, values: Option<&Path>) -> Vec<Yaml> {
    let chart = chart();
    let mut args = vec!["template", "rel", chart.to_str().unwrap()];
    if let Some(values) = values {
        args.extend(["-f", values.to_str().unwrap()]);
    }
    let out = helm(helm_bin, &args);
    assert!(out.status.success(), "helm template failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| <Yaml as serde::Deserialize>::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn find<'a>(objects: &'a [Yaml], kind: &str, name: &str) -> Option<&'a Yaml> {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn kinds(objects: &[Yaml]) -> Vec<String> {
    objects.iter().map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap())).collect()
}

/// Checks what every scenario must render; returns (deployment, parsed knas config).
fn common_checks(objects: &[Yaml]) -> (Yaml, knas::config::ServiceConfig) {
    let deployment = find(objects, "Deployment", "rel-knas").unwrap_or_else(|| panic!("no Deployment in {:?}", kinds(objects))).clone();
    let pod = &deployment["spec"]["template"];
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    for (key, value) in selector.as_mapping().unwrap() {
        assert_eq!(&pod["metadata"]["labels"][key], value, "pod labels carry the selector");
    }
    assert_eq!(selector["app.kubernetes.io/name"], "knas");
    assert_eq!(deployment["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm");
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let container = &pod["spec"]["containers"][0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"][0], "ALL");
    assert_eq!(container["ports"][0]["name"], "http");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "http");

    let service = find(objects, "Service", "rel-knas").expect("a Service");
    assert_eq!(service["spec"]["ports"][0]["name"], "http");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert!(find(objects, "ServiceAccount", "rel-knas").is_some());

    // The rendered configuration is one knas itself accepts.
    let configmap = find(objects, "ConfigMap", "rel-knas").expect("the config ConfigMap");
    let text = configmap["data"]["knas.yaml"].as_str().unwrap();
    let parsed: knas::config::ServiceConfig =
        knas::config::parse_yaml(text, Path::new("knas.yaml")).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(parsed.listen.to_string(), "0.0.0.0:9400");
    assert_eq!(parsed.store, PathBuf::from("/var/lib/knas/store/knas-runs.db"));
    assert_eq!(parsed.policy_dir, PathBuf::from("/var/lib/knas/policies"));
    (deployment, parsed)
}

#[test]
fn chart_lints_and_renders_every_install_scenario() {
    let Some(helm_bin) = tool("helm") else { return };
    let chart = chart();
    let out = helm(&helm_bin, &["lint", chart.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));

    let mut scenarios: Vec<PathBuf> = std::fs::read_dir(chart.join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    scenarios.sort();
    assert!(scenarios.len() >= 3, "{scenarios:?}");
    for values in &scenarios {
        let out = helm(&helm_bin, &["lint", chart.to_str().unwrap(), "-f", values.to_str().unwrap()]);
        assert!(out.status.success(), "lint {}: {}", values.display(), String::from_utf8_lossy(&out.stdout));
        common_checks(&render(&helm_bin, Some(values)));
    }

    // Defaults: no monitoring objects, no GPU.
    let objects = render(&helm_bin, None);
    let (deployment, config) = common_checks(&objects);
    assert!(objects.iter().all(|o| o["kind"] != "ServiceMonitor"), "{:?}", kinds(&objects));
    assert!(find(&objects, "ConfigMap", "rel-knas-dashboard").is_none());
    assert!(deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"].is_null());
    assert_eq!(config.device, knas::engine::DeviceChoice::Auto);
    assert!(find(&objects, "PersistentVolumeClaim", "rel-knas-store").is_some());
    assert!(find(&objects, "PersistentVolumeClaim", "rel-knas-policies").is_some());

    // CPU only.
    let objects = render(&helm_bin, Some(&chart.join("ci/cpu-values.yaml")));
    let (deployment, config) = common_checks(&objects);
    assert_eq!(config.device, knas::engine::DeviceChoice::Cpu);
    assert!(deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"].is_null());
    let init = &deployment["spec"]["template"]["spec"]["initContainers"][0];
    assert!(init["args"][0].as_str().unwrap().contains("for name in evolution random"), "{init:?}");

    // GPU: requested, scheduled on GPU nodes, and the service runs on CUDA.
    let objects = render(&helm_bin, Some(&chart.join("ci/gpu-values.yaml")));
    let (deployment, config) = common_checks(&objects);
    let spec = &deployment["spec"]["template"]["spec"];
    assert_eq!(spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"], 1);
    assert_eq!(spec["nodeSelector"]["nvidia.com/gpu.present"], "true");
    assert_eq!(spec["tolerations"][0]["key"], "nvidia.com/gpu");
    assert_eq!(config.device, knas::engine::DeviceChoice::Cuda(0));
    assert_eq!(find(&objects, "PersistentVolumeClaim", "rel-knas-store").unwrap()["spec"]["storageClassName"], "fast-ssd");

    // Monitoring: a ServiceMonitor kube-prometheus-stack selects, the dashboard ConfigMap.
    let objects = render(&helm_bin, Some(&chart.join("ci/monitoring-values.yaml")));
    common_checks(&objects);
    let monitor = find(&objects, "ServiceMonitor", "rel-knas").expect("a ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "http");
    assert_eq!(monitor["spec"]["endpoints"][0]["path"], "/metrics");
    let dashboard = find(&objects, "ConfigMap", "rel-knas-dashboard").expect("the dashboard ConfigMap");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value = serde_json::from_str(dashboard["data"]["knas.json"].as_str().unwrap()).unwrap();
    assert_eq!(shipped, dashboard_json(), "the chart ships the dashboard file");
    let policies = find(&objects, "ConfigMap", "rel-knas-policies").expect("the user policies ConfigMap");
    assert_eq!(policies["binaryData"]["custom.wasm"], "AGFzbQ0AAQA=");
    assert!(find(&objects, "PersistentVolumeClaim", "rel-knas-policies").is_none(), "policies on an emptyDir");
    // Other policy bytes roll the pod out (only its init container reads them); the same
    // bytes do not.
    let checksum = |objects: &[Yaml]| {
        let deployment = find(objects, "Deployment", "rel-knas").expect("the Deployment");
        deployment["spec"]["template"]["metadata"]["annotations"]["checksum/policies"].as_str().expect("a policies checksum").to_owned()
    };
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other-policy.yaml");
    let monitoring = std::fs::read_to_string(chart.join("ci/monitoring-values.yaml")).unwrap();
    std::fs::write(&other, monitoring.replace("custom: AGFzbQ0AAQA=", "custom: AGFzbQ0AAQB=")).unwrap();
    assert_ne!(checksum(&objects), checksum(&render(&helm_bin, Some(&other))));
    assert_eq!(checksum(&objects), checksum(&render(&helm_bin, Some(&chart.join("ci/monitoring-values.yaml")))));
    // A parent chart's `global:` values pass the schema.
    let umbrella = dir.path().join("global.yaml");
    std::fs::write(&umbrella, "global:\n  imageRegistry: registry.example\n").unwrap();
    render(&helm_bin, Some(&umbrella));

    // Katib: the suggestion algorithm entry, with the chart's image, running `knas katib`
    // with flags it accepts.
    assert!(find(&render(&helm_bin, None), "ConfigMap", "rel-knas-katib").is_none());
    let objects = render(&helm_bin, Some(&chart.join("ci/katib-values.yaml")));
    let katib = find(&objects, "ConfigMap", "rel-knas-katib").expect("the Katib ConfigMap");
    let entries: Yaml = serde_yaml::from_str(katib["data"]["suggestion.yaml"].as_str().unwrap()).unwrap();
    let entry = &entries[0];
    assert_eq!(entry["algorithmName"], "knas");
    assert!(entry["image"].as_str().unwrap().starts_with("ghcr.io/knas-project/knas:"), "{entry:?}");
    assert_eq!(entry["volumeMountPath"], "/opt/katib/data");
    let command: Vec<&str> = entry["command"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(&command[..2], ["knas", "katib"]);
    assert!(command.contains(&"--device=cuda") && command.contains(&"--store=/opt/katib/data/knas-runs.db"), "{command:?}");
    // A CUDA device comes with a GPU; the metrics port is named for a PodMonitor.
    assert_eq!(entry["resources"]["limits"]["nvidia.com/gpu"], 1, "{entry:?}");
    assert!(command.contains(&"--metrics-listen=0.0.0.0:9400"), "{command:?}");
    assert_eq!((entry["ports"][0]["name"].as_str(), entry["ports"][0]["containerPort"].as_u64()), (Some("metrics"), Some(9400)));
    // The PodMonitor scrapes that port on Katib's suggestion pods, in the Experiments'
    // namespace, or in every namespace when none is named; none unless asked for.
    let monitor = find(&objects, "PodMonitor", "rel-knas-katib").expect("a PodMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "kube-prometheus-stack");
    let selector = &monitor["spec"]["selector"]["matchExpressions"][0];
    assert_eq!((selector["key"].as_str(), selector["operator"].as_str()), (Some("katib.kubeflow.org/suggestion"), Some("Exists")));
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["port"], entry["ports"][0]["name"]);
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["path"], "/metrics");
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"][0], "kubeflow-user");
    let dir = tempfile::tempdir().unwrap();
    let everywhere = dir.path().join("everywhere.yaml");
    std::fs::write(&everywhere, "katib: { enabled: true, podMonitor: { enabled: true } }\n").unwrap();
    let objects = render(&helm_bin, Some(&everywhere));
    assert_eq!(find(&objects, "PodMonitor", "rel-knas-katib").expect("a PodMonitor")["spec"]["namespaceSelector"]["any"], true);
    let off = dir.path().join("off.yaml");
    std::fs::write(&off, "katib: { enabled: true }\n").unwrap();
    assert!(render(&helm_bin, Some(&off)).iter().all(|o| o["kind"] != "PodMonitor"));
    let help = crate::common::knas().args(["katib", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in &command[2..] {
        let name = flag.split('=').next().unwrap();
        assert!(help.contains(name), "knas katib has no {name}");
    }
}

/// The Katib example: a complete Experiment whose parameters and settings the service
/// accepts, and a katib-config entry like the chart's.
#[test]
fn katib_example_is_complete_and_accepted() {
    let root = workspace().join("examples").join("katib");
    let experiment: Yaml = serde_yaml::from_str(&std::fs::read_to_string(root.join("experiment.yaml")).unwrap()).unwrap();
    assert_eq!(experiment["kind"], "Experiment");
    let spec = &experiment["spec"];
    assert_eq!(spec["algorithm"]["algorithmName"], "knas");
    assert_eq!(spec["metricsCollectorSpec"]["collector"]["kind"], "StdOut");
    assert_eq!(spec["resumePolicy"], "FromVolume");
    // The same Experiment as Katib would send it: the service's own parser accepts it.
    let parameters = spec["parameters"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|p| knas::katib::proto::ParameterSpec {
            name: p["name"].as_str().unwrap().into(),
            parameter_type: if p["parameterType"] == "categorical" { knas::katib::proto::ParameterType::Categorical as i32 } else { 0 },
            feasible_space: Some(knas::katib::proto::FeasibleSpace {
                list: p["feasibleSpace"]["list"].as_sequence().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect(),
                ..Default::default()
            }),
        })
        .collect();
    let settings = spec["algorithm"]["algorithmSettings"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| knas::katib::proto::AlgorithmSetting { name: s["name"].as_str().unwrap().into(), value: s["value"].as_str().unwrap().into() })
        .collect();
    let proto = knas::katib::proto::Experiment {
        name: experiment["metadata"]["name"].as_str().unwrap().into(),
        spec: Some(knas::katib::proto::ExperimentSpec {
            parameter_specs: Some(knas::katib::proto::experiment_spec::ParameterSpecs { parameters }),
            objective: Some(knas::katib::proto::ObjectiveSpec {
                r#type: knas::katib::proto::ObjectiveType::Maximize as i32,
                objective_metric_name: spec["objective"]["objectiveMetricName"].as_str().unwrap().into(),
                ..Default::default()
            }),
            algorithm: Some(knas::katib::proto::AlgorithmSpec { algorithm_name: "knas".into(), algorithm_settings: settings }),
            max_trial_count: spec["maxTrialCount"].as_i64().unwrap() as i32,
            ..Default::default()
        }),
    };
    let plan = knas::katib::mapping::Plan::from_experiment(Some(&proto), &knas::run::Experiment::default()).expect("the example is valid");
    assert_eq!(plan.space_size(), 15_625);
    assert!(policy(&plan.policy).is_file(), "the example's policy {} is built in", plan.policy);
    // The trial command, as Katib's StdOut collector runs it: `sh -c` and the container's
    // command words (after a leading `sh -c`) joined by spaces, then its redirection and
    // completion mark. Run by a real shell against a stand-in `knas` that writes down its
    // arguments: `knas train` gets the NB201 string the template assembles, whole.
    let container = &spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0];
    let words: Vec<&str> = container["command"].as_sequence().unwrap().iter().chain(container["args"].as_sequence().unwrap()).map(|w| w.as_str().unwrap()).collect();
    assert_eq!(&words[..2], ["sh", "-c"], "{words:?}");
    let mut line = words[2..].join(" ");
    let (ops, arch) = (["nor_conv_3x3", "none", "skip_connect", "none", "nor_conv_1x1", "avg_pool_3x3"], "|nor_conv_3x3~0|+|none~0|skip_connect~1|+|none~0|nor_conv_1x1~1|avg_pool_3x3~2|");
    for (reference, op) in ["e01", "e02", "e12", "e03", "e13", "e23"].iter().zip(ops) {
        line = line.replace(&format!("${{trialParameters.{reference}}}"), op);
    }
    let dir = tempfile::tempdir().unwrap();
    let stand_in = dir.path().join("knas");
    std::fs::write(&stand_in, "#!/bin/sh\nprintf '%s\\n' \"$@\" > \"$ARGS_FILE\"\n").unwrap();
    std::fs::set_permissions(&stand_in, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755)).unwrap();
    let metrics = dir.path().join("metrics.log");
    let wrapped = format!("{line} 1>{} 2>&1 && echo completed > {}", metrics.display(), dir.path().join("done.pid").display());
    let path = format!("{}:{}", dir.path().display(), std::env::var("PATH").unwrap_or_default());
    let status = Command::new("sh").arg("-c").arg(&wrapped).env("PATH", path).env("ARGS_FILE", dir.path().join("args")).status().unwrap();
    assert!(status.success(), "{wrapped}");
    let args = std::fs::read_to_string(dir.path().join("args")).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(&args[..2], ["train", arch], "{wrapped}");
    assert!(args.contains(&"--format=katib"), "{args:?}");
    assert!(dir.path().join("done.pid").is_file());
    let config: Yaml = serde_yaml::from_str(&std::fs::read_to_string(root.join("katib-config.yaml")).unwrap()).unwrap();
    let inner: Yaml = serde_yaml::from_str(config["data"]["katib-config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(inner["runtime"]["suggestions"][0]["algorithmName"], "knas");
}

#[test]
fn values_schema_rejects_bad_values() {
    let Some(helm_bin) = tool("helm") else { return };
    let dir = tempfile::tempdir().unwrap();
    for (values, complaint) in [
        ("service:\n  port: http\n", "service.port: Invalid type. Expected: integer, given: string"),
        ("gpu:\n  enabled: true\n  count: 0\n", "gpu.count: Must be greater than or equal to 1"),
        ("policies:\n  builtin: [evolution, genetic]\n", "policies.builtin.1: policies.builtin.1 must be one of"),
        ("config:\n  listen: 0.0.0.0:80\n", "config: Must not validate the schema (not)"),
        ("securityContext:\n  allowPrivilegeEscalation: true\n", "securityContext.allowPrivilegeEscalation"),
        ("replicaCount: 3\n", "Additional property replicaCount is not allowed"),
        ("config:\n  device: tpu\n", "config.device: Does not match pattern"),
        ("katib:\n  podMonitor:\n    namespaces: [Team_A]\n", "katib.podMonitor.namespaces.0: Does not match pattern"),
        // A PodMonitor for the pods of a katib entry the chart does not render.
        ("katib:\n  podMonitor:\n    enabled: true\n", "katib.enabled does not match: true"),
    ] {
        let file = dir.path().join("bad-values.yaml");
        std::fs::write(&file, values).unwrap();
        let out = helm(&helm_bin, &["template", "rel", chart().to_str().unwrap(), "-f", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{values}");
        assert!(stderr.contains("values don't meet the specifications of the schema"), "{stderr}");
        assert!(stderr.contains(complaint), "for\n{values}expected {complaint:?} in:\n{stderr}");
    }
}

#[test]
fn monitors_refuse_a_scrape_timeout_longer_than_their_interval() {
    let Some(helm_bin) = tool("helm") else { return };
    let dir = tempfile::tempdir().unwrap();
    let render = |values: &str| {
        let file = dir.path().join("values.yaml");
        std::fs::write(&file, values).unwrap();
        helm(&helm_bin, &["template", "rel", chart().to_str().unwrap(), "-f", file.to_str().unwrap()])
    };
    for (values, complaint) in [
        ("serviceMonitor: {enabled: true, interval: 5s, scrapeTimeout: 10s}\n", "serviceMonitor.scrapeTimeout (10s) is longer than serviceMonitor.interval (5s)"),
        // Units are compared, not the numbers as written.
        ("katib: {enabled: true, podMonitor: {enabled: true, interval: 500ms, scrapeTimeout: 1s}}\n", "katib.podMonitor.scrapeTimeout (1s) is longer than katib.podMonitor.interval (500ms)"),
    ] {
        let out = render(values);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "accepted:\n{values}");
        assert!(stderr.contains(complaint), "for\n{values}expected {complaint:?} in:\n{stderr}");
    }
    // Equal, or a smaller number in a larger unit, renders as given.
    let out = render("serviceMonitor: {enabled: true, interval: 1m, scrapeTimeout: 60000ms}\nkatib: {enabled: true, podMonitor: {enabled: true, interval: 1h, scrapeTimeout: 59m}}\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(rendered.contains("interval: 1m\n      scrapeTimeout: 60000ms"), "{rendered}");
    assert!(rendered.contains("interval: 1h\n      scrapeTimeout: 59m"), "{rendered}");
}

#[test]
fn dockerfile_builds_from_files_that_exist() {
    let root = workspace();
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
    let mut heredoc = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        if heredoc {
            heredoc = !line.chars().all(|c| c.is_ascii_uppercase());
            continue;
        }
        if let Some(rest) = line.strip_prefix("COPY ") {
            if rest.contains("<<") {
                heredoc = true;
                continue;
            }
            if rest.starts_with("--from") {
                continue;
            }
            let parts: Vec<&str> = rest.split_whitespace().collect();
            for source in &parts[..parts.len() - 1] {
                assert!(*source == "." || root.join(source).exists(), "COPY source {source} does not exist");
            }
        }
    }
    assert!(dockerfile.contains("scripts/setup.sh") && root.join("scripts/setup.sh").exists());
    // The profile it builds policies with exists, and so do the policies the chart offers.
    assert!(dockerfile.contains("--profile policy"));
    assert!(std::fs::read_to_string(root.join("Cargo.toml")).unwrap().contains("[profile.policy]"));
    for name in ["random", "evolution", "pruning", "hill-climb"] {
        assert!(policy(name).exists(), "the image ships policies/{name}.wasm");
    }
    // Non-root, and the service is the entrypoint.
    let user = dockerfile.lines().find_map(|l| l.strip_prefix("USER ")).expect("a USER line");
    assert!(!user.starts_with("0") && !user.starts_with("root"), "USER {user}");
    assert!(dockerfile.contains(r#"ENTRYPOINT ["knas", "serve"]"#));
    // The Katib suggestion pod's store folder is the image user's, for experiments that
    // mount no volume there.
    assert!(dockerfile.contains("/opt/katib/data") && dockerfile.lines().any(|l| l.contains("chown") && l.contains("/opt/katib/data")));
    let ignore = std::fs::read_to_string(root.join(".dockerignore")).unwrap();
    for heavy in ["target", ".venv", ".git"] {
        assert!(ignore.lines().any(|l| l == heavy), ".dockerignore leaves out {heavy}");
    }
}

/// The dashboard shipped in the chart (and linked from examples/).
fn dashboard_json() -> serde_json::Value {
    let text = std::fs::read_to_string(chart().join("files").join("knas-dashboard.json")).unwrap();
    let example = std::fs::read_to_string(workspace().join("examples").join("grafana-dashboard.json")).unwrap();
    assert_eq!(text, example, "examples/grafana-dashboard.json is the chart's dashboard");
    serde_json::from_str(&text).unwrap()
}

/// Every PromQL expression of the dashboard, with Grafana's variables substituted.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for panel in panels.as_array().into_iter().flatten() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = target["expr"].as_str() {
                    let expr = expr.replace("$__rate_interval", "1m").replace("$run", ".*");
                    out.push((panel["title"].as_str().unwrap_or("?").to_owned(), expr));
                }
            }
            walk(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let Some(prometheus) = tool("prometheus") else { return };
    let dashboard = dashboard_json();
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() >= 15, "{queries:?}");

    let dir = tempfile::tempdir().unwrap();
    let service = Service::start_in(dir.path(), &config(6, 1));
    // A run that finishes (scores and a training), one that keeps evaluating, and a file
    // that is refused (a policy error).
    service.drop_policy("random", "short");
    service.wait_for("the short run", |s| s.run("short").is_some_and(|r| r["status"] == "done"));
    std::fs::write(dir.path().join("knas.yaml"), config(100_000, 0)).unwrap();
    service.wait_for("the new configuration", |s| {
        crate::serve::metric(&s.metrics(), r#"knas_config_reloads_total{outcome="applied"}"#) == Some(1.0)
    });
    service.drop_policy("evolution", "long");
    std::fs::write(dir.path().join("policies").join("broken.wasm"), b"\0asm\x01\0\0\0").unwrap();
    service.wait_for("the long run", |s| s.run("long").is_some_and(|r| r["status"] == "running"));

    // The Katib suggestion service, asked for one trial.
    let katib = crate::katib::Service::start(&dir.path().join("katib.db"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let mut client = knas::katib::proto::suggestion_client::SuggestionClient::connect(katib.address.clone()).await.unwrap();
        let experiment = crate::katib::experiment("dashboard", &[&crate::katib::OPS[..]; 6], &[("candidates-per-trial", "2")], 1);
        client.get_suggestions(crate::katib::request(&experiment, vec![], 1)).await.unwrap();
    });

    let server = Prometheus::start_scraping(&prometheus, dir.path(), &[&service.address, &katib.metrics]);
    // Rates need a few scrapes.
    server.query_until("count_over_time(knas_build_info[1m])", |r| r.first().is_some_and(|s| s["value"][1].as_str().unwrap_or("0").parse::<f64>().unwrap_or(0.0) >= 4.0));
    for (panel, expr) in &queries {
        let result = server.query_until(expr, |result| {
            result.iter().any(|sample| sample["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).is_some_and(f64::is_finite))
        });
        assert!(!result.is_empty(), "panel {panel:?}: {expr} returned nothing");
    }
    // The run variable: label_values(knas_budget, run).
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert_eq!(variables.iter().filter(|v| v["definition"].is_string()).count(), 1, "the dashboard's run variable");
    for variable in variables {
        if let Some(definition) = variable["definition"].as_str() {
            let inner = definition.strip_prefix("label_values(").and_then(|d| d.strip_suffix(')')).unwrap();
            let (metric, label) = inner.split_once(", ").unwrap();
            let result = server.query(metric);
            assert!(result.iter().any(|s| s["metric"][label] == "long"), "variable {definition}");
            // Katib runs are listed too.
            assert!(result.iter().any(|s| s["metric"][label].as_str().is_some_and(|run| run.starts_with("katib-"))), "variable {definition}: {result:?}");
        }
    }
}
