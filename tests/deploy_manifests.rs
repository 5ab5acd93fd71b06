//! The deployment files agree with the binary they deploy: `Dockerfile`, `docker-compose.yml`,
//! `deploy/kubernetes/` and the operator's guide `docs/operations.md`.
//!
//! Every environment variable they set must be one `card-registrar` accepts, read from its own
//! `--help` (so renaming a setting breaks this test, not a deployment); probes must hit the admin
//! endpoints; grace periods must outlast the shutdown timeout; autoscaling must stay within the
//! partitions; compose dependencies and key files must exist; every command the guide shows must
//! parse. No Docker engine or cluster is needed: the files are parsed, the binary is asked.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// Partitions per input topic (`scripts/services`, the compose `topics` job).
const PARTITIONS_PER_TOPIC: u64 = 6;
const BINARY: &str = env!("CARGO_BIN_EXE_card-registrar");
const KUBERNETES: &str = "deploy/kubernetes";
const COMPOSE: &str = "docker-compose.yml";
const GUIDE: &str = "docs/operations.md";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: impl AsRef<Path>) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every document of a YAML file, with `<<` merge keys applied; empty documents dropped.
fn yaml_documents(relative: impl AsRef<Path>) -> Vec<Value> {
    let relative = relative.as_ref();
    let text = read(relative);
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|document| {
            let mut value = Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", relative.display()));
            value.apply_merge().unwrap_or_else(|e| panic!("{}: bad merge key: {e}", relative.display()));
            value
        })
        .filter(|v| !v.is_null())
        .collect()
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

fn int(value: &Value) -> u64 {
    text(value).parse().unwrap_or_else(|e| panic!("expected an integer, got {value:?}: {e}"))
}

// ---------------------------------------------------------------- what the binary accepts

/// `card-registrar <args> --help`, with an empty environment so no value leaks into the text.
fn help(args: &[&str]) -> String {
    let output = Command::new(BINARY).args(args).arg("--help").env_clear().output().expect("run the binary");
    assert!(output.status.success(), "`card-registrar {} --help` failed", args.join(" "));
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// Environment variable -> default value, from one help text.
fn env_vars_in(help: &str) -> BTreeMap<String, Option<String>> {
    let mut vars = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim();
        let is_option = t.starts_with("--") || (t.starts_with('-') && t.as_bytes().get(2) == Some(&b','));
        if is_option {
            current = None;
        }
        if let Some(rest) = t.strip_prefix("[env: ") {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            vars.insert(name.clone(), None);
            current = Some(name);
        } else if let (Some(rest), Some(name)) = (t.strip_prefix("[default: "), &current) {
            vars.insert(name.clone(), Some(rest.trim_end_matches(']').to_owned()));
        }
    }
    vars
}

/// The variables a subcommand accepts: its own plus the top-level ones (DATABASE_URL is not global).
fn accepted(subcommand: &[&str]) -> BTreeMap<String, Option<String>> {
    let mut vars = env_vars_in(&help(&[]));
    vars.extend(env_vars_in(&help(subcommand)));
    vars
}

/// The variables of every subcommand together.
fn accepted_anywhere() -> BTreeMap<String, Option<String>> {
    let mut vars = BTreeMap::new();
    for sub in [
        &["run"][..],
        &["migrate"],
        &["card", "show"],
        &["outbox", "list"],
        &["dead-letters", "replay"],
        &["publish"],
    ] {
        vars.extend(accepted(sub));
    }
    vars
}

/// The `D1SIM_*` variables of `d1-simulator serve`, from its source (its binary is another package's).
fn simulator_env_vars() -> BTreeSet<String> {
    let source = read("d1-simulator/src/main.rs");
    let vars: BTreeSet<String> =
        source.split("env = \"").skip(1).filter_map(|s| s.split('"').next()).map(str::to_owned).collect();
    assert!(vars.contains("D1SIM_LISTEN"), "the simulator's env attributes were not found");
    vars
}

fn shutdown_default() -> u64 {
    let vars = accepted(&["run"]);
    let default =
        vars.get("SHUTDOWN_TIMEOUT_SECS").cloned().flatten().expect("SHUTDOWN_TIMEOUT_SECS has a default");
    default.parse().expect("a number of seconds")
}

// ---------------------------------------------------------------- Kubernetes

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

fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {listen}"))
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

// ---------------------------------------------------------------- compose

fn compose() -> Value {
    yaml_documents(COMPOSE).remove(0)
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"].as_mapping().expect("services").iter().map(|(k, v)| (text(k), v.clone())).collect()
}

fn environment(service: &Value) -> BTreeMap<String, String> {
    match &service["environment"] {
        Value::Mapping(m) => m.iter().map(|(k, v)| (text(k), text(v))).collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("use the mapping form of environment, not {other:?}"),
    }
}

fn strings(value: &Value) -> Vec<String> {
    seq(value).iter().map(text).collect()
}

#[test]
fn compose_dependencies_refer_to_services_that_can_meet_their_condition() {
    let compose = compose();
    let services = services(&compose);
    for (name, service) in &services {
        let Some(depends) = service["depends_on"].as_mapping() else { continue };
        for (target, condition) in depends {
            let target = text(target);
            let other = services.get(&target).unwrap_or_else(|| panic!("{name} depends on unknown {target}"));
            match condition["condition"].as_str() {
                Some("service_healthy") => {
                    assert!(!other["healthcheck"].is_null(), "{target} has no healthcheck")
                }
                Some("service_completed_successfully") => {
                    assert_eq!(other["restart"].as_str(), Some("no"), "{target} must be a one-shot job")
                }
                Some("service_started") => {}
                other => panic!("{name} -> {target}: unexpected condition {other:?}"),
            }
        }
        if let Some(mode) = service["network_mode"].as_str().and_then(|m| m.strip_prefix("service:")) {
            assert!(services.contains_key(mode), "{name} shares the network of unknown {mode}");
        }
    }
}

/// The program a compose service runs from our image: (binary, subcommand), or None for a shell job.
fn program(service: &Value) -> Option<(String, String)> {
    let entrypoint = strings(&service["entrypoint"]);
    let command = strings(&service["command"]);
    match entrypoint.first().map(String::as_str) {
        None => Some(("card-registrar".into(), command.first().cloned().unwrap_or_else(|| "run".into()))),
        Some("d1-simulator") => Some(("d1-simulator".into(), command.first().cloned().unwrap_or_default())),
        Some(_) => None,
    }
}

#[test]
fn every_compose_env_var_of_our_image_is_accepted_by_the_program_it_runs() {
    let compose = compose();
    let simulator = simulator_env_vars();
    let mut checked = 0;
    for (name, service) in services(&compose) {
        if service["image"].as_str() != Some("card-registrar:local") {
            continue;
        }
        match program(&service) {
            Some((binary, sub)) if binary == "card-registrar" => {
                // The `cli` service runs whatever command is given: any subcommand's variable will do.
                let accepted = if sub == "--help" { accepted_anywhere() } else { accepted(&[sub.as_str()]) };
                for var in environment(&service).keys() {
                    assert!(
                        accepted.contains_key(var),
                        "{name}: {var} is not a variable of `card-registrar {sub}`"
                    );
                    checked += 1;
                }
            }
            Some(_) => {
                for var in environment(&service).keys() {
                    assert!(
                        simulator.contains(var) || var == "RUST_LOG",
                        "{name}: {var} is not a simulator variable"
                    );
                    checked += 1;
                }
            }
            None => assert!(environment(&service).is_empty(), "{name}: a shell job takes no settings"),
        }
    }
    assert!(checked > 20, "only {checked} variables checked");
}

#[test]
fn compose_key_paths_are_files_the_keys_job_writes() {
    let dir = tempfile::tempdir().expect("a temp dir");
    d1_simulator::keys::generate(dir.path(), &d1_simulator::KeyOptions::default()).expect("generate keys");
    let compose = compose();
    let services = services(&compose);
    let keys_job = services["keys"]["command"].clone();
    assert!(strings(&keys_job).concat().contains("d1-simulator keys --out /keys"));
    let mut checked = 0;
    for (name, service) in &services {
        for (var, value) in environment(service) {
            if let Some(file) = value.strip_prefix("/keys/") {
                assert!(
                    dir.path().join(file).is_file(),
                    "{name}: {var}={value} is not written by `d1-simulator keys`"
                );
                checked += 1;
            }
        }
        for arg in strings(&service["command"]) {
            if let Some(file) = arg.strip_prefix("/keys/") {
                assert!(
                    dir.path().join(file).is_file(),
                    "{name}: {arg} is not written by `d1-simulator keys`"
                );
            }
        }
    }
    assert!(checked >= 6, "only {checked} key paths checked");
}

#[test]
fn compose_worker_reaches_the_simulator_on_loopback_and_stops_within_its_grace_period() {
    let compose = compose();
    let services = services(&compose);
    let worker = &services["card-registrar"];
    let env = environment(worker);
    assert_eq!(worker["network_mode"].as_str(), Some("service:d1-simulator"), "plain http needs loopback");
    let simulator = environment(&services["d1-simulator"]);
    let d1 = url::Url::parse(&env["D1_API_URL"]).expect("D1_API_URL is a URL");
    assert_eq!(d1.host_str(), Some("127.0.0.1"));
    assert_eq!(d1.port().map(u64::from), Some(port_of(&simulator["D1SIM_LISTEN"])));
    assert_eq!(env["D1_ISSUER_ID"], simulator["D1SIM_ISSUER_ID"]);
    let admin = port_of(&env["ADMIN_LISTEN"]);
    assert!(env["ADMIN_LISTEN"].starts_with("0.0.0.0:"));
    let published = strings(&services["d1-simulator"]["ports"]);
    assert!(published.iter().any(|p| p.ends_with(&format!(":{admin}"))), "the admin port is published");
    let health = strings(&worker["healthcheck"]["test"]).concat();
    assert!(health.contains(&format!("/dev/tcp/127.0.0.1/{admin}")) && health.contains("GET /readyz"));

    let grace = worker["stop_grace_period"]
        .as_str()
        .and_then(|s| s.strip_suffix('s'))
        .expect("stop_grace_period: Ns");
    let timeout: u64 = env
        .get("SHUTDOWN_TIMEOUT_SECS")
        .map(|s| s.parse().expect("seconds"))
        .unwrap_or_else(shutdown_default);
    assert!(grace.parse::<u64>().expect("seconds") > timeout, "stop_grace_period must exceed {timeout} s");
}

#[test]
fn compose_topics_job_creates_the_workers_topics_with_six_partitions() {
    let compose = compose();
    let services = services(&compose);
    let script = strings(&services["topics"]["command"]).concat();
    assert!(
        script.contains(&format!("--partitions {PARTITIONS_PER_TOPIC}"))
            && script.contains("--if-not-exists")
    );
    let env = environment(&services["card-registrar"]);
    for var in ["TOPIC_CARD_CREATED", "TOPIC_CARD_TOKENIZED", "TOPIC_CARD_ORDERED"] {
        assert!(script.contains(&env[var]), "topics job does not create {}", env[var]);
    }
    assert_eq!(env["KAFKA_BROKERS"], "kafka:9092");
    assert!(text(&services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]).contains("//kafka:9092"));
}

// ---------------------------------------------------------------- Dockerfile

/// Dockerfile instructions per stage: (stage name, [(INSTRUCTION, arguments)]), continuations joined.
fn dockerfile_stages() -> Vec<(String, Vec<(String, String)>)> {
    let mut logical = Vec::new();
    let mut pending = String::new();
    for line in read("Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') && pending.is_empty() || t.is_empty() {
            continue;
        }
        if let Some(head) = t.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
        } else {
            pending.push_str(t);
            logical.push(std::mem::take(&mut pending));
        }
    }
    let mut stages: Vec<(String, Vec<(String, String)>)> = Vec::new();
    for line in logical {
        let (instruction, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let instruction = instruction.to_ascii_uppercase();
        if instruction == "FROM" {
            let name =
                args.split_whitespace().skip_while(|w| !w.eq_ignore_ascii_case("AS")).nth(1).unwrap_or("");
            stages.push((name.to_owned(), Vec::new()));
        }
        if let Some((_, instructions)) = stages.last_mut() {
            instructions.push((instruction, args.trim().to_owned()));
        }
    }
    stages
}

#[test]
fn dockerfile_runtime_runs_as_a_numeric_non_root_user_the_binary_built_by_the_builder() {
    let stages = dockerfile_stages();
    let (runtime_name, runtime) = stages.last().expect("a runtime stage");
    let get = |stage: &[(String, String)], instruction: &str| -> Vec<String> {
        stage.iter().filter(|(i, _)| i == instruction).map(|(_, a)| a.clone()).collect()
    };
    let user = get(runtime, "USER").pop().expect("the runtime stage sets USER");
    let uid = user.split(':').next().expect("uid");
    assert!(uid.parse::<u32>().is_ok_and(|u| u != 0), "USER must be a numeric non-root uid, got {user}");
    assert!(get(runtime, "FROM")[0].starts_with("debian:bookworm-slim"), "runtime base");

    let entrypoint: Vec<String> =
        serde_json::from_str(&get(runtime, "ENTRYPOINT").pop().expect("ENTRYPOINT")).expect("exec form");
    assert_eq!(entrypoint, ["card-registrar"]);
    let cmd: Vec<String> = serde_json::from_str(&get(runtime, "CMD").pop().expect("CMD")).expect("exec form");
    assert_eq!(cmd, ["run"]);

    let copies = get(runtime, "COPY");
    let from_builder = copies.iter().find(|c| c.contains("--from=")).expect("COPY --from the builder");
    let builder_name =
        from_builder.split("--from=").nth(1).and_then(|s| s.split_whitespace().next()).expect("stage");
    assert_ne!(builder_name, runtime_name);
    let (_, builder) = stages.iter().find(|(n, _)| n == builder_name).expect("the builder stage exists");
    assert!(get(builder, "FROM")[0].contains("bookworm"), "builder and runtime share a Debian release");
    let build = get(builder, "RUN").into_iter().find(|r| r.contains("cargo build")).expect("cargo build");
    assert!(build.contains("--release") && build.contains("--locked") && build.contains("--workspace"));
    for binary in ["card-registrar", "d1-simulator"] {
        assert!(build.contains(&format!("target/release/{binary}")), "the builder keeps {binary}");
        assert!(from_builder.contains(&format!("/{binary}")), "the runtime copies {binary}");
    }

    let env = get(runtime, "ENV").join(" ");
    let listen =
        env.split_whitespace().find_map(|kv| kv.strip_prefix("ADMIN_LISTEN=")).expect("ADMIN_LISTEN");
    assert_eq!(get(runtime, "EXPOSE"), [port_of(listen).to_string()]);
    assert!(
        get(runtime, "HEALTHCHECK").is_empty(),
        "probes are per orchestrator (see the Dockerfile header)"
    );
}

#[test]
fn docker_context_leaves_out_build_output_and_history() {
    let ignored: BTreeSet<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    for entry in ["target", ".git"] {
        assert!(ignored.contains(entry), ".dockerignore must exclude {entry}");
    }
    for needed in
        ["src", "schemas", "migrations", "benches", "d1-simulator", "Cargo.toml", "Cargo.lock", "build.rs"]
    {
        assert!(!ignored.contains(needed), "{needed} is needed by the build");
    }
}

// ---------------------------------------------------------------- the operator's guide

#[test]
fn the_guide_documents_every_setting_with_its_default() {
    let guide = read(GUIDE);
    let documented: BTreeMap<String, String> = guide
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_').then(|| {
                (name.to_owned(), cells.get(2).map(|d| d.trim_matches('`').to_owned()).unwrap_or_default())
            })
        })
        .collect();
    let mut expected = accepted(&["run"]);
    expected.extend(env_vars_in(&help(&["publish"])));
    for (var, default) in &expected {
        let doc = documented.get(var).unwrap_or_else(|| panic!("{GUIDE} has no table row for {var}"));
        if let Some(default) = default {
            assert_eq!(doc, default, "{GUIDE}: default of {var}");
        }
    }
}

/// `card-registrar ...` command lines of the guide (inline code and code blocks).
fn guide_commands() -> Vec<Vec<String>> {
    let guide = read(GUIDE);
    let mut commands = Vec::new();
    for chunk in guide.split("card-registrar ").skip(1) {
        // A table cell's `list\|retry` ends at the escaped pipe: the first word is checked.
        let line = chunk.split(['`', '\n', '|', '\\', '#', ';', ')']).next().unwrap_or_default();
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        let known = ["run", "migrate", "card", "outbox", "dead-letters", "publish"];
        if words.first().is_some_and(|w| known.contains(&w.as_str())) {
            commands.push(words);
        }
    }
    commands
}

#[test]
fn every_command_the_guide_shows_parses_with_its_flags() {
    let commands = guide_commands();
    assert!(commands.len() >= 8, "only {} commands found in {GUIDE}", commands.len());
    for words in commands {
        let path: Vec<&str> = words
            .iter()
            .map(String::as_str)
            .take_while(|w| !w.starts_with('-') && !w.starts_with('<'))
            .collect();
        let path: Vec<&str> = match path.as_slice() {
            // `card show <id>`, `outbox retry <id>`: a positional argument follows two words.
            [a, b, ..] if ["card", "outbox", "dead-letters"].contains(a) => vec![a, b],
            [a, ..] => vec![a],
            [] => continue,
        };
        let text = help(&path);
        for flag in words.iter().filter(|w| w.starts_with("--")) {
            let flag = flag.split('=').next().unwrap_or(flag);
            assert!(
                text.contains(&format!("{flag} ")) || text.contains(&format!("{flag}\n")),
                "`card-registrar {}`: {flag} is not an option",
                words.join(" ")
            );
        }
    }
}
