//! Deployment artifacts, validated offline: the Kubernetes manifests (rendered from one
//! source, checked in, checked against the Kubernetes OpenAPI schemas and for the invariants
//! a platform team relies on), the container image definition, the compose file, the
//! dashboard and the alerts (which must use exactly the metric names the services emit).

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use tracefold_cli::deploy::{self, Size};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn docs(size: Size) -> Vec<Value> {
    deploy::render(size).into_iter().flat_map(|(_, d)| d).collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("{kind} {name}"))
}

#[test]
fn checked_in_manifests_are_the_rendered_ones() {
    for size in [Size::Small, Size::Large] {
        let dir = repo().join("deploy/kubernetes").join(size.name());
        let mut expected: Vec<String> = Vec::new();
        for (name, d) in deploy::render(size) {
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                on_disk,
                deploy::to_yaml_file(size, &d),
                "deploy/kubernetes/{}/{name} is stale: run tracefold deploy kubernetes --size {} --out deploy/kubernetes/{}",
                size.name(),
                size.name(),
                size.name()
            );
            expected.push(name);
        }
        let mut present: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        present.sort();
        expected.sort();
        assert_eq!(present, expected, "no stray files in deploy/kubernetes/{}", size.name());
    }
}

#[test]
fn manifests_pass_the_kubernetes_openapi_schemas() {
    let files: Vec<PathBuf> = ["small", "large"]
        .iter()
        .flat_map(|s| std::fs::read_dir(repo().join("deploy/kubernetes").join(s)).unwrap().map(|e| e.unwrap().path()))
        .collect();
    let out = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "--no-warn", "-k", "1.31.0"])
        .args(&files)
        .output()
        .expect("kubernetes-validate (pip install kubernetes-validate; scripts/deps.sh installs it)");
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

#[test]
fn deployments_have_resources_probes_drain_time_security_and_budgets() {
    for size in [Size::Small, Size::Large] {
        let d = docs(size);
        let deployments = of_kind(&d, "Deployment");
        assert_eq!(deployments.len(), 4);
        for dep in deployments {
            let name = dep["metadata"]["name"].as_str().unwrap();
            let pod = &dep["spec"]["template"]["spec"];
            let c = &pod["containers"][0];
            for k in ["requests", "limits"] {
                for r in ["cpu", "memory"] {
                    assert!(c["resources"][k][r].is_string(), "{name}: resources.{k}.{r}");
                }
            }
            let port = c["ports"][0]["name"].as_str().unwrap();
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz", "{name}");
            assert_eq!(c["livenessProbe"]["httpGet"]["port"], port);
            assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > deploy::MAX_DRAIN_SECONDS, "{name}");
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
            assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true, "{name}");
            assert!(!c["image"].as_str().unwrap().ends_with(":latest"));
            let selector = &dep["spec"]["selector"]["matchLabels"];
            let pdbs: Vec<_> = of_kind(&d, "PodDisruptionBudget")
                .into_iter()
                .filter(|p| p["spec"]["selector"]["matchLabels"] == *selector)
                .collect();
            assert_eq!(pdbs.len(), 1, "{name} has one PodDisruptionBudget");
            let secrets: BTreeSet<&str> = c["env"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
                .collect();
            let mut expected = BTreeSet::from(["tracefold-clickhouse", "tracefold-kafka"]);
            if name == "tracefold-producer" {
                expected.insert(deploy::PROJECTS_SECRET);
            }
            assert_eq!(secrets, expected, "{name}");
            // Every config file a container reads is in the ConfigMap and valid for its service.
            let arg = c["args"][1].as_str().unwrap();
            let file = arg.trim_start_matches("/etc/tracefold/");
            let text =
                named(&d, "ConfigMap", "tracefold-config")["data"][file].as_str().unwrap_or_else(|| panic!("{file}"));
            let tmp =
                std::env::temp_dir().join(format!("tracefold-deploy-{}-{}-{file}", std::process::id(), size.name()));
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

#[test]
fn shipped_producers_take_registered_projects_with_keys_only() {
    let guide = std::fs::read_to_string(repo().join("deploy/README.md")).unwrap();
    assert!(
        guide.contains(deploy::PLACEHOLDER_KEY) && guide.contains(deploy::PROJECTS_SECRET),
        "the guide says what to replace"
    );
    for size in [Size::Small, Size::Large] {
        let d = docs(size);
        let text = named(&d, "ConfigMap", "tracefold-config")["data"]["producer.toml"].as_str().unwrap().to_owned();
        let tmp = std::env::temp_dir().join(format!("tracefold-producer-{}-{}.toml", std::process::id(), size.name()));
        std::fs::write(&tmp, &text).unwrap();
        let cfg: tracefold_producer::Config = tracefold_runtime::config::load(Some(&tmp), Vec::new()).unwrap();
        assert!(!cfg.http.allow_unregistered_projects, "{text}");
        assert!(!cfg.projects.is_empty() && cfg.projects.iter().all(|p| !p.keys.is_empty()), "{text}");
        assert_eq!(cfg.projects[0].keys, [deploy::PLACEHOLDER_KEY]);
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
        let producer = named(&d, "Deployment", "tracefold-producer");
        let env = producer["spec"]["template"]["spec"]["containers"][0]["env"].as_array().unwrap();
        assert!(env
            .iter()
            .any(|e| e["name"] == "TRACEFOLD__PROJECTS"
                && e["valueFrom"]["secretKeyRef"]["name"] == deploy::PROJECTS_SECRET));
    }
    let compose = std::fs::read_to_string(repo().join("deploy/compose/docker-compose.yml")).unwrap();
    assert!(compose.contains("TRACEFOLD__HTTP__ALLOW_UNREGISTERED_PROJECTS: \"false\""), "compose too");
    assert!(compose.contains("TRACEFOLD__PROJECTS:") && compose.contains(deploy::PLACEHOLDER_KEY));
}

#[test]
fn topics_autoscaling_migration_and_monitoring() {
    let defs = tracefold_runtime::topics::definitions();
    for size in [Size::Small, Size::Large] {
        let d = docs(size);
        // Topics: generated from schemas/topics.toml.
        let topics = of_kind(&d, "KafkaTopic");
        assert_eq!(topics.len(), defs.len());
        for def in &defs {
            let t = topics
                .iter()
                .find(|t| t["spec"]["topicName"] == def.name.as_str())
                .expect("topic for every definition");
            assert_eq!(t["spec"]["config"]["retention.ms"], def.retention_ms);
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
            match size {
                Size::Small => {
                    let h = named(&d, "HorizontalPodAutoscaler", deployment);
                    assert_eq!(h["spec"]["metrics"][0]["resource"]["name"], "cpu");
                    assert!(h["spec"]["maxReplicas"].as_u64().unwrap() <= partitions(topic));
                }
                Size::Large => {
                    let so = named(&d, "ScaledObject", deployment);
                    let trig = &so["spec"]["triggers"][0];
                    assert_eq!(trig["type"], "kafka");
                    assert_eq!(trig["metadata"]["consumerGroup"], group);
                    assert_eq!(trig["metadata"]["topic"], topic.as_str());
                    assert!(so["spec"]["maxReplicaCount"].as_u64().unwrap() <= partitions(topic));
                    assert!(of_kind(&d, "HorizontalPodAutoscaler").iter().all(|h| h["metadata"]["name"] != deployment));
                }
            }
        }
        assert_eq!(
            (
                tracefold_grouper::Config::default().grouper.group_id,
                tracefold_writer::Config::default().writer.group_id
            ),
            ("tracefold-grouper".to_owned(), "tracefold-writer".to_owned())
        );
        // The producer scales on CPU in both sizes.
        named(&d, "HorizontalPodAutoscaler", "tracefold-producer");
        // Migrations run as a Job.
        let job = named(&d, "Job", "tracefold-migrate");
        assert_eq!(job["spec"]["template"]["spec"]["containers"][0]["command"][1], "migrate");
        // Every metrics-bearing Service is selected by the ServiceMonitor, on a port it scrapes.
        let sm = named(&d, "ServiceMonitor", "tracefold");
        let sel = sm["spec"]["selector"]["matchLabels"].as_object().unwrap();
        let ports: BTreeSet<&str> =
            sm["spec"]["endpoints"].as_array().unwrap().iter().map(|e| e["port"].as_str().unwrap()).collect();
        let services = of_kind(&d, "Service");
        assert_eq!(services.len(), 4);
        for svc in services {
            assert!(sel.iter().all(|(k, v)| svc["metadata"]["labels"][k] == *v), "{}", svc["metadata"]["name"]);
            assert!(ports.contains(svc["spec"]["ports"][0]["name"].as_str().unwrap()));
        }
        // The kustomization lists every other file.
        let files = deploy::render(size);
        let kust = &files.iter().find(|(n, _)| n == "kustomization.yaml").unwrap().1[0];
        let listed: BTreeSet<&str> =
            kust["resources"].as_array().unwrap().iter().map(|r| r.as_str().unwrap()).collect();
        let all: BTreeSet<&str> =
            files.iter().map(|(n, _)| n.as_str()).filter(|n| *n != "kustomization.yaml").collect();
        assert_eq!(listed, all);
    }
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
    let alerts = serde_json::to_string(&deploy::alerts()).unwrap();
    let in_alerts = metric_names_in(&alerts);
    assert!(
        in_alerts.is_subset(&known),
        "alerts use unknown metrics: {:?}",
        in_alerts.difference(&known).collect::<Vec<_>>()
    );
    // The README's metrics table lists exactly these names.
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme.split("## Metrics").nth(1).unwrap().split("\n## ").next().unwrap();
    assert_eq!(metric_names_in(section), known, "README metrics table");
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
