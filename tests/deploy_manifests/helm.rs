//! `deploy/helm/card-registrar`, rendered with `helm template` in every variant (support::VARIANTS):
//! every setting is one the binary accepts and parses, probes hit the admin endpoints, grace periods
//! outlast the shutdown timeout, KEDA stays within the partitions, selectors, secrets, hooks and
//! alerts agree with each other, and every object is valid against the Kubernetes and CRD schemas
//! (kubeconform, schemas vendored in tests/deploy_manifests/schemas).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use serde_yaml_ng::Value;

use crate::support::*;

/// Every rendered object of one kind, over every variant.
fn objects(kind: &str) -> Vec<Value> {
    rendered()
        .iter()
        .flat_map(|(_, objects)| objects)
        .filter(|o| o["kind"].as_str() == Some(kind))
        .cloned()
        .collect()
}

/// The objects of the default values.
fn default_objects() -> &'static [Value] {
    &rendered()[0].1
}

fn named_in<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"].as_str() == Some(kind) && o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

fn example_secrets() -> Vec<Value> {
    yaml_documents(SECRETS_EXAMPLE)
}

fn config_map() -> BTreeMap<String, String> {
    let data = &named_in(default_objects(), "ConfigMap", "card-registrar")["data"];
    data.as_mapping().expect("ConfigMap data").iter().map(|(k, v)| (text(k), text(v))).collect()
}

fn shutdown_timeout_in_config_map() -> u64 {
    config_map()
        .get("SHUTDOWN_TIMEOUT_SECS")
        .map(|s| s.parse().expect("seconds"))
        .unwrap_or_else(shutdown_default)
}

fn container(workload: &Value) -> &Value {
    let containers = seq(&workload["spec"]["template"]["spec"]["containers"]);
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

/// Each variant's Deployments with the variant's objects.
fn deployments() -> Vec<(&'static [Value], &'static Value)> {
    rendered()
        .iter()
        .flat_map(|(_, objects)| {
            objects
                .iter()
                .filter(|o| o["kind"].as_str() == Some("Deployment"))
                .map(move |d| (objects.as_slice(), d))
        })
        .collect()
}

#[test]
fn every_config_map_key_is_a_setting_of_run() {
    let accepted = accepted(&["run"]);
    for key in config_map().keys() {
        assert!(accepted.contains_key(key), "ConfigMap key {key} is not a variable of `card-registrar run`");
    }
}

#[test]
fn config_map_values_have_the_type_of_their_defaults() {
    let accepted = accepted(&["run"]);
    for (key, value) in config_map() {
        let Some(Some(default)) = accepted.get(&key) else { continue };
        if default.parse::<u64>().is_ok() {
            assert!(value.parse::<u64>().is_ok(), "{key}={value} must be a whole number like {default}");
        } else if default.parse::<bool>().is_ok() {
            assert!(value.parse::<bool>().is_ok(), "{key}={value} must be true or false");
        }
    }
}

/// Runs `card-registrar run` with a Deployment's configuration (no key files exist here): the
/// first complaint must be a missing key file, so every other value parsed and validated.
fn first_complaint(env: &BTreeMap<String, String>) -> String {
    let output = Command::new(BINARY)
        .arg("run")
        .env_clear()
        .envs(env)
        .env("DATABASE_URL", "postgres://card_registrar@127.0.0.1:1/card_registrar")
        .output()
        .expect("run the binary");
    assert_eq!(output.status.code(), Some(2), "a configuration error, not a crash or a start");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_binary_accepts_every_deployments_configuration_up_to_the_missing_key_files() {
    let keys = secret_files_mount();
    for (objects, deployment) in deployments() {
        let data = &named_in(objects, "ConfigMap", "card-registrar")["data"];
        let mut env: BTreeMap<String, String> =
            data.as_mapping().expect("data").iter().map(|(k, v)| (text(k), text(v))).collect();
        for var in seq(&container(deployment)["env"]) {
            if let Some(value) = var["value"].as_str() {
                env.insert(text(&var["name"]), value.to_owned());
            }
        }
        let stderr = first_complaint(&env);
        assert!(stderr.contains(&format!("cannot read {keys}/")), "unexpected complaint: {stderr}");
        // Dispatch alone: the D1 settings are validated before their key files are read.
        env.insert("INGEST_ENABLED".into(), "false".into());
        env.insert("DISPATCH_ENABLED".into(), "true".into());
        let stderr = first_complaint(&env);
        assert!(stderr.starts_with("error: D1_AUTH_KEY: cannot read"), "unexpected complaint: {stderr}");
    }
}

#[test]
fn every_workload_env_var_is_a_setting_of_its_command() {
    let run = accepted(&["run"]);
    for (_, deployment) in deployments() {
        for var in seq(&container(deployment)["env"]) {
            let name = text(&var["name"]);
            assert!(run.contains_key(&name), "Deployment env {name} is not a variable of `run`");
        }
    }
    let migrate = accepted(&["migrate"]);
    for job in objects("Job") {
        assert_eq!(seq(&container(&job)["args"]).iter().map(text).collect::<Vec<_>>(), ["migrate"]);
        for var in seq(&container(&job)["env"]) {
            let name = text(&var["name"]);
            assert!(migrate.contains_key(&name), "Job env {name} is not a variable of `migrate`");
        }
    }
}

#[test]
fn the_migrate_job_is_a_pre_install_and_pre_upgrade_hook_and_the_workers_then_skip_migrations() {
    for (sets, objects) in rendered() {
        let jobs: Vec<&Value> = objects.iter().filter(|o| o["kind"].as_str() == Some("Job")).collect();
        let job_enabled = !sets.iter().any(|s| s == "migrations.job.enabled=false");
        assert_eq!(jobs.len(), usize::from(job_enabled), "{sets:?}: one migrate Job when enabled");
        for job in &jobs {
            let annotations = &job["metadata"]["annotations"];
            let hooks: BTreeSet<&str> =
                annotations["helm.sh/hook"].as_str().expect("a hook").split(',').collect();
            assert_eq!(hooks, BTreeSet::from(["pre-install", "pre-upgrade"]));
            assert!(text(&annotations["helm.sh/hook-delete-policy"]).contains("before-hook-creation"));
            // Hooks run before the chart's objects exist: the Job must not need any of them.
            let pod = &job["spec"]["template"]["spec"];
            assert!(pod["serviceAccountName"].is_null(), "the Job must not use the chart's service account");
            assert!(container(job)["envFrom"].is_null(), "the Job must not read the chart's ConfigMap");
            assert_eq!(text(&pod["restartPolicy"]), "Never");
        }
        for deployment in objects.iter().filter(|o| o["kind"].as_str() == Some("Deployment")) {
            let env: BTreeMap<String, String> = seq(&container(deployment)["env"])
                .iter()
                .filter_map(|v| Some((text(&v["name"]), v["value"].as_str()?.to_owned())))
                .collect();
            let skip = env.get("MIGRATE_ON_START").map(String::as_str);
            assert_eq!(
                skip,
                job_enabled.then_some("false"),
                "{sets:?}: workers migrate only without the Job"
            );
        }
    }
}

#[test]
fn workloads_take_config_from_the_config_map_and_secrets_by_reference_to_the_example_secrets() {
    let secrets = example_secrets();
    let secret_keys = |name: &str| -> BTreeSet<String> {
        let secret = secrets
            .iter()
            .find(|s| s["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("{SECRETS_EXAMPLE} has no Secret {name}"));
        secret["stringData"].as_mapping().expect("stringData").keys().map(text).collect()
    };
    for (sets, objects) in rendered() {
        assert!(
            objects.iter().all(|o| o["kind"].as_str() != Some("Secret")),
            "{sets:?}: the chart creates no Secret (secrets by reference only)"
        );
    }
    for (_, deployment) in deployments() {
        let c = container(deployment);
        let from: Vec<String> = seq(&c["envFrom"]).iter().map(|e| text(&e["configMapRef"]["name"])).collect();
        assert_eq!(from, ["card-registrar"], "config comes from the ConfigMap");
    }
    for workload in objects("Deployment").iter().chain(objects("Job").iter()) {
        for var in seq(&container(workload)["env"]) {
            let reference = &var["valueFrom"]["secretKeyRef"];
            if !reference.is_null() {
                let key = text(&reference["key"]);
                assert!(secret_keys(&text(&reference["name"])).contains(&key), "secret key {key} missing");
            }
        }
    }
}

#[test]
fn key_files_named_in_the_config_map_are_in_the_read_only_secret_mount() {
    let config = config_map();
    let keys = secret_files_mount();
    let secrets = example_secrets();
    let files: BTreeSet<String> = named_in(&secrets, "Secret", "card-registrar-keys")["stringData"]
        .as_mapping()
        .expect("stringData")
        .keys()
        .map(text)
        .collect();
    for var in [
        "D1_AUTH_KEY",
        "D1_ENCRYPTION_KEY",
        "CARD_DATA_KEYS",
        "D1_CLIENT_CERT",
        "D1_CLIENT_KEY",
        "D1_CA_CERT",
    ] {
        if let Some(path) = config.get(var) {
            let file = path
                .strip_prefix(&format!("{keys}/"))
                .unwrap_or_else(|| panic!("{var}={path} is not under the key mount {keys}"));
            assert!(files.contains(file), "{var}: {file} is not a key of the card-registrar-keys Secret");
        }
    }
    for required in ["D1_AUTH_KEY", "D1_ENCRYPTION_KEY", "CARD_DATA_KEYS", "D1_ISSUER_ID", "D1_AUTH_KEY_ID"] {
        assert!(config.contains_key(required), "the ConfigMap must set {required}");
    }
}

/// The mount path of the keys Secret, the same in every Deployment, and read-only; every other
/// Secret volume (e.g. Kafka's files) read-only too.
fn secret_files_mount() -> String {
    let mut paths = BTreeSet::new();
    for (_, deployment) in deployments() {
        let volumes = seq(&deployment["spec"]["template"]["spec"]["volumes"]);
        let mounts = seq(&container(deployment)["volumeMounts"]);
        for volume in volumes.iter().filter(|v| !v["secret"].is_null()) {
            let mount =
                mounts.iter().find(|m| m["name"] == volume["name"]).expect("each Secret volume is mounted");
            assert_eq!(mount["readOnly"].as_bool(), Some(true), "Secrets are mounted read-only");
            assert_eq!(volume["secret"]["defaultMode"].as_u64(), Some(0o440));
            if volume["secret"]["secretName"].as_str() == Some("card-registrar-keys") {
                paths.insert(text(&mount["mountPath"]));
            }
        }
    }
    assert_eq!(paths.len(), 1, "one key mount path: {paths:?}");
    paths.into_iter().next().expect("a path")
}

#[test]
fn probes_hit_healthz_and_readyz_on_the_admin_port_and_start_up_is_probed_apart() {
    let config = config_map();
    let listen = config.get("ADMIN_LISTEN").expect("the ConfigMap sets ADMIN_LISTEN");
    assert!(
        !listen.starts_with("127.") && !listen.starts_with("localhost"),
        "probes cannot reach loopback: {listen}"
    );
    for (_, deployment) in deployments() {
        let c = container(deployment);
        let ports = seq(&c["ports"]);
        let admin = ports.iter().find(|p| p["name"].as_str() == Some("admin")).expect("a port named admin");
        assert_eq!(int(&admin["containerPort"]), port_of(listen), "admin port = ADMIN_LISTEN's port");
        for (probe, path) in
            [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]
        {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
            assert_eq!(text(&get["port"]), "admin", "{probe} port");
        }
        let startup = &c["startupProbe"];
        assert!(
            int(&startup["periodSeconds"]) * int(&startup["failureThreshold"]) >= 60,
            "a minute to start"
        );
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(text(&annotations["prometheus.io/scrape"]), "true");
        assert_eq!(text(&annotations["prometheus.io/port"]).parse::<u64>().ok(), Some(port_of(listen)));
        assert_eq!(text(&annotations["prometheus.io/path"]), "/metrics");
    }
}

#[test]
fn termination_grace_period_outlasts_the_shutdown_timeout() {
    let timeout = shutdown_timeout_in_config_map();
    for (_, deployment) in deployments() {
        let grace = int(&deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]);
        assert!(grace > timeout, "grace {grace} s must exceed SHUTDOWN_TIMEOUT_SECS {timeout} s");
    }
}

#[test]
fn pods_run_non_root_with_a_read_only_root_no_capabilities_no_token_within_resource_limits() {
    for workload in objects("Deployment").iter().chain(objects("Job").iter()) {
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        assert_ne!(pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0), 0);
        assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
        let c = container(workload);
        let security = &c["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(seq(&security["capabilities"]["drop"]).iter().map(text).collect::<Vec<_>>(), ["ALL"]);
        for part in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(!c["resources"][part][resource].is_null(), "resources.{part}.{resource} is set");
            }
        }
    }
    for deployment in objects("Deployment") {
        assert_eq!(seq(&container(&deployment)["args"]).iter().map(text).collect::<Vec<_>>(), ["run"]);
    }
}

#[test]
fn workers_run_under_the_charts_service_account_which_mounts_no_token() {
    let objects = default_objects();
    let account = named_in(objects, "ServiceAccount", "card-registrar");
    assert_eq!(account["automountServiceAccountToken"].as_bool(), Some(false));
    for deployment in objects.iter().filter(|o| o["kind"].as_str() == Some("Deployment")) {
        assert_eq!(text(&deployment["spec"]["template"]["spec"]["serviceAccountName"]), "card-registrar");
    }
}

#[test]
fn keda_never_scales_beyond_the_partitions_of_a_topic_watches_every_topic_and_authenticates_when_asked() {
    let config = config_map();
    let mut seen = 0;
    for (sets, objects) in rendered() {
        let keda_enabled = !sets.iter().any(|s| s == "keda.enabled=false");
        let scaled: Vec<&Value> =
            objects.iter().filter(|o| o["kind"].as_str() == Some("ScaledObject")).collect();
        assert_eq!(scaled.len(), usize::from(keda_enabled), "{sets:?}");
        for deployment in objects.iter().filter(|o| o["kind"].as_str() == Some("Deployment")) {
            // With KEDA the ScaledObject owns the count; a `replicas` field would fight it on upgrades.
            let scaled_by_keda =
                keda_enabled && deployment["metadata"]["name"].as_str() == Some("card-registrar");
            assert_eq!(deployment["spec"]["replicas"].is_null(), scaled_by_keda, "{sets:?}: replicas");
        }
        for scaled in scaled {
            seen += 1;
            let spec = &scaled["spec"];
            let (min, max) = (int(&spec["minReplicaCount"]), int(&spec["maxReplicaCount"]));
            assert!(max <= PARTITIONS_PER_TOPIC, "maxReplicaCount {max} > {PARTITIONS_PER_TOPIC} partitions");
            assert!(1 <= min && min <= max);
            named_in(objects, "Deployment", &text(&spec["scaleTargetRef"]["name"]));
            let mut watched = BTreeSet::new();
            for trigger in seq(&spec["triggers"]) {
                assert_eq!(trigger["type"].as_str(), Some("kafka"));
                let meta = &trigger["metadata"];
                assert_eq!(text(&meta["consumerGroup"]), config["KAFKA_GROUP_ID"]);
                assert_eq!(text(&meta["bootstrapServers"]), config["KAFKA_BROKERS"]);
                assert_eq!(text(&meta["allowIdleConsumers"]), "false");
                watched.insert(text(&meta["topic"]));
                let auth = &trigger["authenticationRef"]["name"];
                let wants_auth = sets.iter().any(|s| s == "keda.authentication.enabled=true");
                assert_eq!(!auth.is_null(), wants_auth, "{sets:?}: authenticationRef");
                if wants_auth {
                    let trigger_auth = named_in(objects, "TriggerAuthentication", &text(auth));
                    let parameters: BTreeSet<String> = seq(&trigger_auth["spec"]["secretTargetRef"])
                        .iter()
                        .map(|r| text(&r["parameter"]))
                        .collect();
                    for needed in ["sasl", "username", "password", "tls", "ca"] {
                        assert!(parameters.contains(needed), "TriggerAuthentication lacks {needed}");
                    }
                }
            }
            let topics: BTreeSet<String> =
                ["TOPIC_CARD_CREATED", "TOPIC_CARD_TOKENIZED", "TOPIC_CARD_ORDERED"]
                    .iter()
                    .map(|t| config[*t].clone())
                    .collect();
            assert_eq!(watched, topics, "one lag trigger per input topic");
        }
    }
    assert!(seen >= 2, "KEDA is rendered in several variants");
}

#[test]
fn split_makes_ingest_and_dispatch_two_deployments_that_share_the_d1_budget() {
    let (_, split) = &rendered()[1];
    let ingest = named_in(split, "Deployment", "card-registrar");
    let dispatch = named_in(split, "Deployment", "card-registrar-dispatch");
    let env = |d: &Value| -> BTreeMap<String, String> {
        seq(&container(d)["env"])
            .iter()
            .filter_map(|v| Some((text(&v["name"]), v["value"].as_str()?.to_owned())))
            .collect()
    };
    assert_eq!(env(ingest).get("DISPATCH_ENABLED").map(String::as_str), Some("false"));
    let dispatch_env = env(dispatch);
    assert_eq!(dispatch_env.get("INGEST_ENABLED").map(String::as_str), Some("false"));
    let replicas = int(&dispatch["spec"]["replicas"]);
    let rps: u64 = dispatch_env["D1_MAX_RPS"].parse().expect("a number");
    assert_eq!(rps, 600, "D1_MAX_RPS is the fleet's budget: the example's 600, whatever the replicas");
    let most: u64 = dispatch_env["D1_MAX_REPLICAS"].parse().expect("a number");
    assert_eq!(most, replicas, "a dispatcher cut off from PostgreSQL takes 1/replicas of the budget");
    assert_eq!(int(&dispatch["spec"]["strategy"]["rollingUpdate"]["maxSurge"]), 0, "never more dispatchers");
}

#[test]
fn service_monitor_budgets_and_network_policy_select_the_pods_they_mean() {
    for (sets, objects) in rendered() {
        let pod_labels: Vec<Value> = objects
            .iter()
            .filter(|o| o["kind"].as_str() == Some("Deployment"))
            .map(|d| d["spec"]["template"]["metadata"]["labels"].clone())
            .collect();
        let selects = |selector: &Value| {
            pod_labels.iter().any(|labels| {
                selector.as_mapping().expect("a selector").iter().all(|(k, v)| labels.get(k) == Some(v))
            })
        };
        let of_kind = |kind: &'static str| objects.iter().filter(move |o| o["kind"].as_str() == Some(kind));
        for service in of_kind("Service") {
            assert!(selects(&service["spec"]["selector"]), "{sets:?}: Service selects no pods");
            let ports = seq(&service["spec"]["ports"]);
            let metrics =
                ports.iter().find(|p| p["targetPort"].as_str() == Some("admin")).expect("admin port");
            for monitor in of_kind("ServiceMonitor") {
                let wanted = &monitor["spec"]["selector"]["matchLabels"];
                let labels = &service["metadata"]["labels"];
                assert!(wanted.as_mapping().expect("labels").iter().all(|(k, v)| labels.get(k) == Some(v)));
                let endpoint = &seq(&monitor["spec"]["endpoints"])[0];
                assert_eq!(endpoint["port"], metrics["name"], "the ServiceMonitor scrapes the admin port");
                assert_eq!(text(&endpoint["path"]), "/metrics");
            }
        }
        let budgets: Vec<&Value> = of_kind("PodDisruptionBudget").collect();
        assert_eq!(budgets.len(), pod_labels.len(), "{sets:?}: one PodDisruptionBudget per Deployment");
        for pdb in budgets {
            assert!(selects(&pdb["spec"]["selector"]["matchLabels"]), "{sets:?}: PDB selects no pods");
        }
        for policy in of_kind("NetworkPolicy") {
            assert!(selects(&policy["spec"]["podSelector"]["matchLabels"]));
            let ingress_ports: Vec<String> = seq(&policy["spec"]["ingress"])
                .iter()
                .flat_map(|rule| seq(&rule["ports"]).iter().map(|p| text(&p["port"])))
                .collect();
            assert_eq!(ingress_ports, ["admin"], "only the admin port is reachable");
            let egress_ports: BTreeSet<u64> = seq(&policy["spec"]["egress"])
                .iter()
                .flat_map(|rule| seq(&rule["ports"]).iter().map(|p| int(&p["port"])))
                .collect();
            let config = config_map();
            let endpoint_port = |url: &str| port_of(url.trim_end_matches('/'));
            for needed in [
                53,
                443,
                5432,
                port_of(&config["KAFKA_BROKERS"]),
                endpoint_port(&config["OTEL_EXPORTER_OTLP_ENDPOINT"]),
            ] {
                assert!(egress_ports.contains(&needed), "egress to port {needed} is allowed");
            }
        }
    }
}

/// The README's section anchors, as GitHub derives them from headings.
fn readme_anchors() -> BTreeSet<String> {
    read(GUIDE)
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

#[test]
fn every_alert_has_a_runbook_url_to_a_readme_section_and_the_prometheus_rule_carries_them_all() {
    let alerts = &yaml_documents("deploy/helm/card-registrar/files/alerts.yml")[0];
    let anchors = readme_anchors();
    let mut names = Vec::new();
    for group in seq(&alerts["groups"]) {
        for rule in seq(&group["rules"]) {
            let name = text(&rule["alert"]);
            let url = text(&rule["annotations"]["runbook_url"]);
            let anchor =
                url.strip_prefix("README.md#").unwrap_or_else(|| panic!("{name}: runbook_url {url}"));
            assert!(anchors.contains(anchor), "{name}: README has no section #{anchor}");
            names.push(name);
        }
    }
    assert!(names.len() >= 6, "the alerts file has its alerts");
    let rule = named_in(default_objects(), "PrometheusRule", "card-registrar");
    let rendered: Vec<(String, String)> = seq(&rule["spec"]["groups"])
        .iter()
        .flat_map(|g| seq(&g["rules"]).iter())
        .map(|r| (text(&r["alert"]), text(&r["annotations"]["runbook_url"])))
        .collect();
    assert_eq!(rendered.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(), names, "same alerts, same order");
    for (name, url) in rendered {
        assert!(
            url.starts_with("https://") && url.contains("README.md#"),
            "{name}: absolute runbook_url {url}"
        );
    }
    // One source: compose's Prometheus reads the same file through deploy/prometheus/alerts.yml.
    assert_eq!(read("deploy/prometheus/alerts.yml"), read("deploy/helm/card-registrar/files/alerts.yml"));
}

/// `kubeconform -strict` over a YAML text with the vendored schemas; (success, output).
fn kubeconform(yaml: &str) -> (bool, String) {
    let schemas = root().join(SCHEMAS);
    let location = format!("{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json", schemas.display());
    let mut child = Command::new(go_tool("kubeconform", "KUBECONFORM"))
        .args(["-strict", "-summary", "-output", "text", "-schema-location", &location, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run kubeconform");
    child.stdin.take().expect("stdin").write_all(yaml.as_bytes()).expect("write manifests");
    let output = child.wait_with_output().expect("kubeconform ends");
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

#[test]
fn every_rendered_object_and_example_is_valid_against_the_kubernetes_and_crd_schemas() {
    let mut kinds = BTreeSet::new();
    for sets in VARIANTS {
        let yaml = helm_template(sets);
        let (ok, output) = kubeconform(&yaml);
        assert!(ok, "helm template {sets:?} is not valid:\n{output}");
        assert!(output.contains("Invalid: 0, Errors: 0"), "{output}");
        kinds.extend(yaml_objects(&yaml, "helm template").iter().map(|o| text(&o["kind"])));
    }
    for example in [SECRETS_EXAMPLE, OTEL_COLLECTOR] {
        let (ok, output) = kubeconform(&read(example));
        assert!(ok, "{example} is not valid:\n{output}");
    }
    let expected = [
        "ConfigMap",
        "Deployment",
        "Job",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "PrometheusRule",
        "ScaledObject",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
        "TriggerAuthentication",
    ];
    assert_eq!(
        kinds,
        expected.iter().map(|k| (*k).to_owned()).collect::<BTreeSet<_>>(),
        "every kind was validated"
    );
}

#[test]
fn the_schema_check_rejects_an_unknown_field_a_wrong_type_and_a_missing_required_field() {
    let good = helm_template(&[]);
    for (mistake, bad) in [
        ("unknown field", good.replacen("terminationGracePeriodSeconds:", "terminationGracePeriodSecs:", 1)),
        ("wrong type", good.replacen("maxReplicaCount: 6", "maxReplicaCount: six", 1)),
        ("unknown CRD field", good.replacen("  endpoints:\n", "  endpoint:\n", 1)),
    ] {
        assert_ne!(bad, good, "{mistake}: the replacement applies");
        let (ok, output) = kubeconform(&bad);
        assert!(!ok, "{mistake} passed validation:\n{output}");
    }
}

#[test]
fn helm_lint_passes() {
    let output = Command::new(go_tool("helm", "HELM"))
        .args(["lint", "--strict", "--kube-version", KUBE_VERSION])
        .arg(root().join(CHART))
        .output()
        .expect("run helm lint");
    assert!(output.status.success(), "helm lint: {}", String::from_utf8_lossy(&output.stdout));
}
