//! `deploy/kubernetes/`: every setting is one the binary accepts and parses, probes hit the admin
//! endpoints, the grace period outlasts the shutdown timeout, KEDA stays within the partitions,
//! selectors, secrets and the kustomization agree with each other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use crate::support::*;

fn kubernetes_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [root().join(KUBERNETES), root().join(KUBERNETES).join("split")] {
        for entry in std::fs::read_dir(&dir).expect("deploy/kubernetes exists") {
            let path = entry.expect("a directory entry").path();
            if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                files.push(path.strip_prefix(root()).expect("under the root").to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// Every Kubernetes object of the folder (split variant included), by kind.
fn objects(kind: &str) -> Vec<Value> {
    kubernetes_files().iter().flat_map(yaml_documents).filter(|o| o["kind"].as_str() == Some(kind)).collect()
}

fn named(kind: &str, name: &str) -> Value {
    objects(kind)
        .into_iter()
        .find(|o| o["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

fn config_map() -> BTreeMap<String, String> {
    let data = &named("ConfigMap", "card-registrar")["data"];
    data.as_mapping().expect("ConfigMap data").iter().map(|(k, v)| (text(k), text(v))).collect()
}

fn shutdown_timeout_in_config_map() -> u64 {
    config_map()
        .get("SHUTDOWN_TIMEOUT_SECS")
        .map(|s| s.parse().expect("seconds"))
        .unwrap_or_else(shutdown_default)
}

fn container(deployment: &Value) -> &Value {
    let containers = seq(&deployment["spec"]["template"]["spec"]["containers"]);
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
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
    for deployment in objects("Deployment") {
        let mut env = config_map();
        for var in seq(&container(&deployment)["env"]) {
            if let Some(value) = var["value"].as_str() {
                env.insert(text(&var["name"]), value.to_owned());
            }
        }
        let stderr = first_complaint(&env);
        assert!(stderr.contains(&format!("cannot read {keys}/")), "unexpected complaint: {stderr}");
        // Dispatch alone: the D1 settings are validated before their key files are read.
        env.insert("INGEST_ENABLED".into(), "false".into());
        let stderr = first_complaint(&env);
        assert!(stderr.starts_with("error: D1_AUTH_KEY: cannot read"), "unexpected complaint: {stderr}");
    }
}

#[test]
fn every_deployment_env_var_is_a_setting_of_run() {
    let accepted = accepted(&["run"]);
    for deployment in objects("Deployment") {
        for var in seq(&container(&deployment)["env"]) {
            let name = text(&var["name"]);
            assert!(
                accepted.contains_key(&name),
                "Deployment env {name} is not a variable of `card-registrar run`"
            );
        }
    }
    // The split variant adds DISPATCH_ENABLED to the base Deployment through a JSON patch.
    let split = read(Path::new(KUBERNETES).join("split/kustomization.yaml"));
    for name in split.lines().filter_map(|l| l.trim().strip_prefix("name: ")) {
        if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            assert!(accepted.contains_key(name), "split patch sets {name}, not a variable of `run`");
        }
    }
}

#[test]
fn deployments_take_config_from_the_config_map_and_secrets_from_the_example_secrets() {
    let secrets = objects("Secret");
    let secret_keys = |name: &str| -> BTreeSet<String> {
        let secret = secrets
            .iter()
            .find(|s| s["metadata"]["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("secret.example.yaml has no Secret {name}"));
        secret["stringData"].as_mapping().expect("stringData").keys().map(text).collect()
    };
    for deployment in objects("Deployment") {
        let c = container(&deployment);
        let from: Vec<String> = seq(&c["envFrom"]).iter().map(|e| text(&e["configMapRef"]["name"])).collect();
        assert_eq!(from, ["card-registrar"], "config comes from the ConfigMap");
        for var in seq(&c["env"]) {
            let reference = &var["valueFrom"]["secretKeyRef"];
            if !reference.is_null() {
                let key = text(&reference["key"]);
                assert!(secret_keys(&text(&reference["name"])).contains(&key), "secret key {key} missing");
            }
        }
        for volume in seq(&deployment["spec"]["template"]["spec"]["volumes"]) {
            if let Some(name) = volume["secret"]["secretName"].as_str() {
                assert!(!secret_keys(name).is_empty());
            }
        }
    }
}

#[test]
fn key_files_named_in_the_config_map_are_in_the_read_only_secret_mount() {
    let config = config_map();
    let keys = secret_files_mount();
    let files: BTreeSet<String> = named("Secret", "card-registrar-keys")["stringData"]
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

/// The mount path of the keys Secret, the same in every Deployment, and read-only.
fn secret_files_mount() -> String {
    let mut paths = BTreeSet::new();
    for deployment in objects("Deployment") {
        let volumes = seq(&deployment["spec"]["template"]["spec"]["volumes"]);
        let keys = volumes
            .iter()
            .find(|v| v["secret"]["secretName"].as_str() == Some("card-registrar-keys"))
            .expect("the keys Secret is a volume");
        let mount = seq(&container(&deployment)["volumeMounts"])
            .iter()
            .find(|m| m["name"] == keys["name"])
            .expect("the keys volume is mounted")
            .clone();
        assert_eq!(mount["readOnly"].as_bool(), Some(true), "keys are mounted read-only");
        paths.insert(text(&mount["mountPath"]));
    }
    assert_eq!(paths.len(), 1, "one key mount path: {paths:?}");
    paths.into_iter().next().expect("a path")
}

#[test]
fn probes_hit_healthz_and_readyz_on_the_admin_port() {
    let config = config_map();
    let listen = config.get("ADMIN_LISTEN").expect("the ConfigMap sets ADMIN_LISTEN");
    assert!(
        !listen.starts_with("127.") && !listen.starts_with("localhost"),
        "probes cannot reach loopback: {listen}"
    );
    for deployment in objects("Deployment") {
        let c = container(&deployment);
        let ports = seq(&c["ports"]);
        let admin = ports.iter().find(|p| p["name"].as_str() == Some("admin")).expect("a port named admin");
        assert_eq!(int(&admin["containerPort"]), port_of(listen), "admin port = ADMIN_LISTEN's port");
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
            let port = text(&get["port"]);
            assert!(
                port == "admin" || port == admin["containerPort"].as_u64().unwrap_or(0).to_string(),
                "{probe} port"
            );
        }
        let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(text(&annotations["prometheus.io/scrape"]), "true");
        assert_eq!(text(&annotations["prometheus.io/port"]).parse::<u64>().ok(), Some(port_of(listen)));
        assert_eq!(text(&annotations["prometheus.io/path"]), "/metrics");
    }
}

#[test]
fn termination_grace_period_outlasts_the_shutdown_timeout() {
    let timeout = shutdown_timeout_in_config_map();
    for deployment in objects("Deployment") {
        let grace = int(&deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]);
        assert!(grace > timeout, "grace {grace} s must exceed SHUTDOWN_TIMEOUT_SECS {timeout} s");
    }
}

#[test]
fn pods_run_non_root_with_a_read_only_root_and_no_capabilities_within_resource_limits() {
    for deployment in objects("Deployment") {
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
        assert_ne!(pod["securityContext"]["runAsUser"].as_u64().unwrap_or(0), 0);
        let c = container(&deployment);
        let security = &c["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true));
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false));
        assert_eq!(seq(&security["capabilities"]["drop"]).iter().map(text).collect::<Vec<_>>(), ["ALL"]);
        for part in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(!c["resources"][part][resource].is_null(), "resources.{part}.{resource} is set");
            }
        }
        assert_eq!(seq(&c["args"]).iter().map(text).collect::<Vec<_>>(), ["run"]);
    }
}

#[test]
fn keda_never_scales_beyond_the_partitions_of_a_topic_and_watches_every_topic() {
    let config = config_map();
    for scaled in objects("ScaledObject") {
        let spec = &scaled["spec"];
        let (min, max) = (int(&spec["minReplicaCount"]), int(&spec["maxReplicaCount"]));
        assert!(max <= PARTITIONS_PER_TOPIC, "maxReplicaCount {max} > {PARTITIONS_PER_TOPIC} partitions");
        assert!(1 <= min && min <= max);
        let target = text(&spec["scaleTargetRef"]["name"]);
        named("Deployment", &target);
        let mut watched = BTreeSet::new();
        for trigger in seq(&spec["triggers"]) {
            assert_eq!(trigger["type"].as_str(), Some("kafka"));
            let meta = &trigger["metadata"];
            assert_eq!(text(&meta["consumerGroup"]), config["KAFKA_GROUP_ID"]);
            assert_eq!(text(&meta["bootstrapServers"]), config["KAFKA_BROKERS"]);
            assert_eq!(text(&meta["allowIdleConsumers"]), "false");
            watched.insert(text(&meta["topic"]));
        }
        let topics: BTreeSet<String> = ["TOPIC_CARD_CREATED", "TOPIC_CARD_TOKENIZED", "TOPIC_CARD_ORDERED"]
            .iter()
            .map(|t| config[*t].clone())
            .collect();
        assert_eq!(watched, topics, "one lag trigger per input topic");
    }
}

#[test]
fn service_and_disruption_budgets_select_the_pods_of_a_deployment() {
    let pod_labels: Vec<Value> =
        objects("Deployment").iter().map(|d| d["spec"]["template"]["metadata"]["labels"].clone()).collect();
    let selects = |selector: &Value| {
        pod_labels.iter().any(|labels| {
            selector.as_mapping().expect("a selector").iter().all(|(k, v)| labels.get(k) == Some(v))
        })
    };
    for service in objects("Service") {
        assert!(selects(&service["spec"]["selector"]), "Service selects no pods");
        let ports = seq(&service["spec"]["ports"]);
        assert!(
            ports.iter().any(|p| p["targetPort"].as_str() == Some("admin")),
            "Service exposes the admin port"
        );
    }
    let budgets = objects("PodDisruptionBudget");
    assert_eq!(budgets.len(), objects("Deployment").len(), "one PodDisruptionBudget per Deployment");
    for pdb in budgets {
        assert!(selects(&pdb["spec"]["selector"]["matchLabels"]), "PDB selects no pods");
    }
}

#[test]
fn kustomization_lists_every_manifest_but_the_secret_example() {
    for (dir, kind) in
        [(KUBERNETES.to_owned(), "Kustomization"), (format!("{KUBERNETES}/split"), "Component")]
    {
        let file = format!("{dir}/kustomization.yaml");
        let k = &yaml_documents(&file)[0];
        assert_eq!(k["kind"].as_str(), Some(kind), "{file}");
        let listed: BTreeSet<String> = seq(&k["resources"]).iter().map(text).collect();
        let present: BTreeSet<String> = std::fs::read_dir(root().join(&dir))
            .expect("dir")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml" && n != "secret.example.yaml")
            .collect();
        assert_eq!(listed, present, "{file} resources");
    }
    let base = read(Path::new(KUBERNETES).join("kustomization.yaml"));
    assert!(base.contains("#   - split"), "the split component is offered (commented) in the base");
}
