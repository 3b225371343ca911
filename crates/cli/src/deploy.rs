//! Kubernetes manifests for a small and a large installation, rendered from one typed source:
//! `tracefold deploy kubernetes --size small|large --out DIR`. The checked-in
//! `deploy/kubernetes/{small,large}` are this output (a test fails when they drift), each a
//! complete kustomization directory (`kubectl apply -k`). Topics come from
//! `schemas/topics.toml`, config files from the services' own defaults.

use serde_json::{json, Value};
use std::fmt::Write as _;

/// Installation size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// One grouper and one writer, CPU-based autoscaling (no KEDA needed).
    Small,
    /// Scaled by consumer lag with KEDA, more partitions and resources.
    Large,
}

impl Size {
    /// `small` or `large`.
    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }
}

/// The container image the manifests run (override with `kustomize edit set image`).
pub const IMAGE: &str = "ghcr.io/tracefold/tracefold:0.1.0";
/// Grace period of every pod: longer than any service's drain (the grouper waits up to 30 s
/// for its final flush, the writer up to 20 s for its last insert).
pub const TERMINATION_GRACE_SECONDS: u64 = 60;
/// The longest drain of any service, seconds.
pub const MAX_DRAIN_SECONDS: u64 = 30;

struct Svc {
    name: &'static str,
    binary: &'static str,
    port: u16,
    port_name: &'static str,
    config: &'static str,
    cpu: (&'static str, &'static str),
    mem: (&'static str, &'static str),
    replicas: u32,
}

fn services(size: Size) -> Vec<Svc> {
    let large = size == Size::Large;
    vec![
        Svc {
            name: "producer",
            binary: "tracefold-producer",
            port: 8080,
            port_name: "http",
            config: "producer.toml",
            cpu: if large { ("1", "2") } else { ("100m", "1") },
            mem: if large { ("512Mi", "1Gi") } else { ("128Mi", "512Mi") },
            replicas: if large { 4 } else { 2 },
        },
        Svc {
            name: "grouper",
            binary: "tracefold-grouper",
            port: 9101,
            port_name: "metrics",
            config: "grouper.toml",
            cpu: if large { ("1", "2") } else { ("250m", "1") },
            mem: if large { ("1Gi", "2Gi") } else { ("256Mi", "1Gi") },
            replicas: if large { 6 } else { 1 },
        },
        Svc {
            name: "detector",
            binary: "tracefold-detector",
            port: 9103,
            port_name: "metrics",
            config: "detector.toml",
            cpu: if large { ("250m", "1") } else { ("100m", "500m") },
            mem: if large { ("512Mi", "1Gi") } else { ("256Mi", "512Mi") },
            replicas: if large { 2 } else { 1 },
        },
        Svc {
            name: "writer",
            binary: "tracefold-writer",
            port: 9102,
            port_name: "metrics",
            config: "writer.toml",
            cpu: if large { ("500m", "1") } else { ("100m", "1") },
            mem: if large { ("512Mi", "1Gi") } else { ("256Mi", "1Gi") },
            replicas: if large { 3 } else { 1 },
        },
    ]
}

fn labels(component: &str) -> Value {
    json!({"app.kubernetes.io/name": "tracefold", "app.kubernetes.io/component": component, "app.kubernetes.io/part-of": "tracefold"})
}

fn secret_env(name: &str, secret: &str, key: &str) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": true}}})
}

/// Environment of every service: Kafka SASL/TLS and ClickHouse credentials from Secrets
/// (optional: absent Secrets leave the config file's values in force).
fn env() -> Vec<Value> {
    vec![
        secret_env("TRACEFOLD__KAFKA__LIBRDKAFKA__SECURITY.PROTOCOL", "tracefold-kafka", "security.protocol"),
        secret_env("TRACEFOLD__KAFKA__LIBRDKAFKA__SASL.MECHANISM", "tracefold-kafka", "sasl.mechanism"),
        secret_env("TRACEFOLD__KAFKA__LIBRDKAFKA__SASL.USERNAME", "tracefold-kafka", "sasl.username"),
        secret_env("TRACEFOLD__KAFKA__LIBRDKAFKA__SASL.PASSWORD", "tracefold-kafka", "sasl.password"),
        secret_env("TRACEFOLD__CLICKHOUSE__USER", "tracefold-clickhouse", "user"),
        secret_env("TRACEFOLD__CLICKHOUSE__PASSWORD", "tracefold-clickhouse", "password"),
    ]
}

/// The Secret whose `projects` key, when present, replaces the ConfigMap's `[[projects]]`
/// (a TOML array: `[{slug = "web", id = 42, keys = ["..."]}]`), so that keys stay out of
/// the ConfigMap.
pub const PROJECTS_SECRET: &str = "tracefold-projects";

/// The example project key in the ConfigMap: a placeholder to replace (the producer warns at
/// start-up while it is in use).
pub const PLACEHOLDER_KEY: &str = "change-me-to-a-random-key";

fn deployment(s: &Svc) -> Value {
    let mut env = env();
    if s.name == "producer" {
        env.push(secret_env("TRACEFOLD__PROJECTS", PROJECTS_SECRET, "projects"));
    }
    let probe = |path: &str, delay: u32| json!({"httpGet": {"path": path, "port": s.port_name}, "initialDelaySeconds": delay, "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": format!("tracefold-{}", s.name), "labels": labels(s.name)},
        "spec": {
            "replicas": s.replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "tracefold", "app.kubernetes.io/component": s.name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels(s.name), "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": s.port.to_string()}},
                "spec": {
                    "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": s.name,
                        "image": IMAGE,
                        "command": [format!("/usr/local/bin/{}", s.binary)],
                        "args": ["--config", format!("/etc/tracefold/{}", s.config)],
                        "ports": [{"name": s.port_name, "containerPort": s.port, "protocol": "TCP"}],
                        "env": env,
                        "resources": {"requests": {"cpu": s.cpu.0, "memory": s.mem.0}, "limits": {"cpu": s.cpu.1, "memory": s.mem.1}},
                        "livenessProbe": probe("/healthz", 10),
                        "readinessProbe": probe("/readyz", 5),
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}},
                        "volumeMounts": [
                            {"name": "config", "mountPath": "/etc/tracefold", "readOnly": true},
                            {"name": "kafka-tls", "mountPath": "/etc/tracefold-kafka-tls", "readOnly": true}
                        ]
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "tracefold-config"}},
                        {"name": "kafka-tls", "secret": {"secretName": "tracefold-kafka-tls", "optional": true}}
                    ]
                }
            }
        }
    })
}

fn service(s: &Svc) -> Value {
    let name =
        if s.name == "producer" { "tracefold-producer".to_owned() } else { format!("tracefold-{}-metrics", s.name) };
    let mut l = labels(s.name);
    l["tracefold.dev/metrics"] = json!("true");
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": l},
        "spec": {
            "selector": {"app.kubernetes.io/name": "tracefold", "app.kubernetes.io/component": s.name},
            "ports": [{"name": s.port_name, "port": s.port, "targetPort": s.port_name, "protocol": "TCP"}]
        }
    })
}

fn pdb(s: &Svc) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": format!("tracefold-{}", s.name), "labels": labels(s.name)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "tracefold", "app.kubernetes.io/component": s.name}}}
    })
}

fn hpa(s: &Svc, max: u32) -> Value {
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": format!("tracefold-{}", s.name), "labels": labels(s.name)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("tracefold-{}", s.name)},
            "minReplicas": s.replicas,
            "maxReplicas": max,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
        }
    })
}

fn scaled_object(s: &Svc, group: &str, topic: &str, max: i32) -> Value {
    json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": format!("tracefold-{}", s.name), "labels": labels(s.name)},
        "spec": {
            "scaleTargetRef": {"name": format!("tracefold-{}", s.name)},
            "minReplicaCount": 1,
            "maxReplicaCount": max,
            "cooldownPeriod": 300,
            "triggers": [
                {"type": "kafka", "metadata": {"bootstrapServers": KAFKA, "consumerGroup": group, "topic": topic, "lagThreshold": "20000", "offsetResetPolicy": "earliest"}},
                {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "80"}}
            ]
        }
    })
}

/// Where the manifests expect Kafka and ClickHouse (edit the ConfigMap, or patch it).
pub const KAFKA: &str = "tracefold-kafka-bootstrap.kafka:9092";
/// The ClickHouse URL in the ConfigMap.
pub const CLICKHOUSE: &str = "http://clickhouse.clickhouse:8123";

fn config_files() -> Value {
    let common = format!(
        "[kafka]\nbootstrap_servers = \"{KAFKA}\"\n\n[telemetry]\nlog_format = \"json\"\nlog_level = \"info\"\n"
    );
    json!({
        "producer.toml": format!(
            "{common}\n[http]\nlisten = \"0.0.0.0:8080\"\n\
             # Only registered projects, each with a key. Replace the example project below, or\n\
             # set the `projects` key of the {PROJECTS_SECRET} Secret (it replaces the list).\n\
             allow_unregistered_projects = false\n\n\
             [[projects]]\nslug = \"web\"\nid = 1\nkeys = [\"{PLACEHOLDER_KEY}\"]\n"
        ),
        "grouper.toml": format!("{common}\n[grouper]\nlisten = \"0.0.0.0:9101\"\n\n[grouping]\nmax_frames = 10\n"),
        "writer.toml": format!("{common}\n[clickhouse]\nurl = \"{CLICKHOUSE}\"\ndatabase = \"tracefold\"\n\n[writer]\nlisten = \"0.0.0.0:9102\"\n"),
        "detector.toml": format!("{common}\n[clickhouse]\nurl = \"{CLICKHOUSE}\"\ndatabase = \"tracefold\"\n\n[detector]\nlisten = \"0.0.0.0:9103\"\n"),
    })
}

fn kafka_topics(size: Size) -> Vec<Value> {
    tracefold_runtime::topics::definitions()
        .into_iter()
        .map(|d| {
            let partitions = match (size, d.role.as_str()) {
                (Size::Large, "events") => 24,
                (Size::Large, "aggregates") => 12,
                _ => d.partitions,
            };
            json!({
                "apiVersion": "kafka.strimzi.io/v1beta2",
                "kind": "KafkaTopic",
                "metadata": {"name": d.name.replace('.', "-"), "labels": {"strimzi.io/cluster": "tracefold-kafka"}},
                "spec": {
                    "topicName": d.name,
                    "partitions": partitions,
                    "replicas": 3,
                    "config": {"retention.ms": d.retention_ms, "cleanup.policy": d.cleanup_policy, "min.insync.replicas": 2}
                }
            })
        })
        .collect()
}

fn migrate_job() -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "tracefold-migrate", "labels": labels("migrate")},
        "spec": {
            "backoffLimit": 5,
            "ttlSecondsAfterFinished": 86400,
            "template": {
                "metadata": {"labels": labels("migrate")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "runAsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "migrate",
                        "image": IMAGE,
                        "command": ["/usr/local/bin/tracefold", "migrate", "--clickhouse-url", CLICKHOUSE, "--database", "tracefold"],
                        "env": [
                            secret_env("TRACEFOLD_CLICKHOUSE_USER", "tracefold-clickhouse", "user"),
                            secret_env("TRACEFOLD_CLICKHOUSE_PASSWORD", "tracefold-clickhouse", "password")
                        ],
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
                        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }
    })
}

fn service_monitor() -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "tracefold", "labels": {"app.kubernetes.io/name": "tracefold"}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "tracefold", "tracefold.dev/metrics": "true"}},
            "endpoints": [
                {"port": "http", "path": "/metrics", "interval": "15s"},
                {"port": "metrics", "path": "/metrics", "interval": "15s"}
            ]
        }
    })
}

/// Alerts (`PrometheusRule`): what each means and what to do is in `deploy/README.md`.
pub fn alerts() -> Value {
    let rule = |name: &str, expr: &str, for_: &str, severity: &str, summary: &str| json!({"alert": name, "expr": expr, "for": for_, "labels": {"severity": severity}, "annotations": {"summary": summary, "runbook": format!("deploy/README.md#{}", name.to_lowercase())}});
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "tracefold", "labels": {"app.kubernetes.io/name": "tracefold"}},
        "spec": {"groups": [{"name": "tracefold", "rules": [
            rule("TracefoldConsumerLagHigh", "sum by (group, topic) (tracefold_kafka_consumer_lag) > 100000", "10m", "warning",
                 "{{ $labels.group }} is more than 100k messages behind on {{ $labels.topic }}"),
            rule("TracefoldClickHouseInsertsFailing", "sum(rate(tracefold_writer_inserts_total{outcome=\"error\"}[5m])) > 0", "5m", "critical",
                 "the writer cannot insert into ClickHouse; it is paused and retrying"),
            rule("TracefoldProducerUnavailable", "sum(rate(tracefold_producer_requests_total{status=\"503\"}[5m])) > 0", "5m", "critical",
                 "the producer answers 503: Kafka does not acknowledge events, or requests are over http.max_concurrent_requests"),
            rule("TracefoldEventsToDLQ", "sum(rate(tracefold_grouper_dlq_total[15m])) + sum(rate(tracefold_writer_malformed_total[15m])) > 0", "15m", "warning",
                 "events are being rejected into the DLQ"),
            rule("TracefoldInternalErrors", "sum(increase(tracefold_grouper_dlq_total{reason=~\"internal|aggregate_too_large\"}[1h])) > 0", "0m", "warning",
                 "the grouper's fault barrier caught a failure (a bug in tracefold, not bad input): events are in the DLQ"),
                        rule("TracefoldBatchReplays", "sum(increase(tracefold_grouper_batches_total{kind=\"replay\"}[1h])) > 10", "0m", "warning",
                 "groupers keep restarting mid-batch (crash loop or rebalance storm)"),
            rule("TracefoldNothingStored", "sum(rate(tracefold_producer_events_total{outcome=\"accepted\"}[15m])) > 0 and sum(rate(tracefold_writer_rows_inserted_total[15m])) == 0", "15m", "critical",
                 "events are accepted but nothing reaches ClickHouse")
        ]}]}
    })
}

/// Every manifest of `size`, as (file name, documents).
pub fn render(size: Size) -> Vec<(String, Vec<Value>)> {
    let svcs = services(size);
    let mut files: Vec<(String, Vec<Value>)> = Vec::new();
    files.push((
        "namespace.yaml".into(),
        vec![json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tracefold", "labels": {"app.kubernetes.io/name": "tracefold"}}})],
    ));
    files.push((
        "configmap.yaml".into(),
        vec![json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "tracefold-config", "labels": {"app.kubernetes.io/name": "tracefold"}}, "data": config_files()})],
    ));
    for s in &svcs {
        files.push((format!("{}.yaml", s.name), vec![deployment(s), service(s), pdb(s)]));
    }
    let topics = kafka_topics(size);
    let partitions = |role: &str| {
        let name = tracefold_runtime::topics::definitions()
            .into_iter()
            .find(|d| d.role == role)
            .map(|d| d.name)
            .unwrap_or_default();
        topics
            .iter()
            .find(|t| t["spec"]["topicName"] == name.as_str())
            .and_then(|t| t["spec"]["partitions"].as_i64())
            .unwrap_or(1) as i32
    };
    let defaults = tracefold_runtime::config::TopicsConfig::default();
    let mut autoscaling = vec![hpa(&svcs[0], if size == Size::Large { 20 } else { 6 })];
    match size {
        // Without KEDA: CPU is the fallback signal for the consumers too.
        Size::Small => {
            autoscaling.push(hpa(&svcs[1], partitions("events") as u32));
            autoscaling.push(hpa(&svcs[3], partitions("aggregates") as u32));
        }
        // With KEDA: scale consumers on their lag, never beyond the partition count.
        Size::Large => {
            autoscaling.push(scaled_object(&svcs[1], "tracefold-grouper", &defaults.events, partitions("events")));
            autoscaling.push(scaled_object(
                &svcs[3],
                "tracefold-writer",
                &defaults.aggregates,
                partitions("aggregates"),
            ));
        }
    }
    files.push(("autoscaling.yaml".into(), autoscaling));
    files.push(("kafka-topics.yaml".into(), topics));
    files.push(("migrate-job.yaml".into(), vec![migrate_job()]));
    files.push(("servicemonitor.yaml".into(), vec![service_monitor()]));
    files.push(("alerts.yaml".into(), vec![alerts()]));
    let resources: Vec<Value> = files.iter().map(|(n, _)| json!(n)).collect();
    files.push((
        "kustomization.yaml".into(),
        vec![json!({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": "tracefold",
            "resources": resources,
            "images": [{"name": "ghcr.io/tracefold/tracefold", "newTag": "0.1.0"}]
        })],
    ));
    files
}

/// Renders YAML documents (`---` separated) with a header.
pub fn to_yaml_file(size: Size, docs: &[Value]) -> String {
    let mut out = format!(
        "# Generated by `tracefold deploy kubernetes --size {}`; do not edit by hand (a test checks it).\n",
        size.name()
    );
    for (i, d) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        yaml(d, 0, &mut out);
    }
    out
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => serde_json::to_string(s).expect("strings serialize"),
        other => other.to_string(),
    }
}

fn yaml(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                let key = if k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')) {
                    k.clone()
                } else {
                    serde_json::to_string(k).expect("keys serialize")
                };
                match val {
                    Value::Object(o) if !o.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        yaml(val, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        let _ = writeln!(out, "{pad}{key}:");
                        yaml(val, indent, out);
                    }
                    Value::String(s) if s.contains('\n') => {
                        let _ = writeln!(out, "{pad}{key}: |");
                        for line in s.lines() {
                            let _ = writeln!(out, "{pad}  {line}");
                        }
                    }
                    Value::Object(_) => {
                        let _ = writeln!(out, "{pad}{key}: {{}}");
                    }
                    Value::Array(_) => {
                        let _ = writeln!(out, "{pad}{key}: []");
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}{key}: {}", scalar(val));
                    }
                }
            }
        }
        Value::Array(a) => {
            for item in a {
                match item {
                    Value::Object(o) if !o.is_empty() => {
                        let mut inner = String::new();
                        yaml(item, indent + 2, &mut inner);
                        // The first line of the item goes after the dash.
                        let inner = inner.trim_start_matches(' ');
                        let _ = write!(out, "{pad}- {inner}");
                    }
                    _ => {
                        let _ = writeln!(out, "{pad}- {}", scalar(item));
                    }
                }
            }
        }
        other => {
            let _ = writeln!(out, "{pad}{}", scalar(other));
        }
    }
}

/// Writes the manifests of `size` into `dir`.
///
/// # Errors
/// When a file cannot be written.
pub fn write(size: Size, dir: &std::path::Path) -> std::io::Result<Vec<String>> {
    std::fs::create_dir_all(dir)?;
    let mut names = Vec::new();
    for (name, docs) in render(size) {
        std::fs::write(dir.join(&name), to_yaml_file(size, &docs))?;
        names.push(name);
    }
    Ok(names)
}
