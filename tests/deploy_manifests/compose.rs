//! `docker-compose.yml`: dependencies exist and can meet their condition, every variable given to
//! our image is one its program accepts, key paths are files the keys job writes, the worker reaches
//! the simulator on loopback and stops within its grace period.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use crate::support::*;

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
