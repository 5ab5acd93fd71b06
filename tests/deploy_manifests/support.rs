//! Shared helpers: reading files of the repository, YAML documents, and what the binary accepts
//! (environment variables and their defaults, parsed from its `--help`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde::Deserialize;
use serde_yaml_ng::Value;

/// Partitions per input topic (`scripts/services`, the compose `topics` job).
pub const PARTITIONS_PER_TOPIC: u64 = 6;
/// The binary under test, built by cargo for this test target.
pub const BINARY: &str = env!("CARGO_BIN_EXE_card-registrar");
/// The Helm chart: the Kubernetes manifests.
pub const CHART: &str = "deploy/helm/card-registrar";
/// The Secrets the chart refers to, as an example (placeholders).
pub const SECRETS_EXAMPLE: &str = "deploy/helm/secrets.example.yaml";
/// The OpenTelemetry Collector example.
pub const OTEL_COLLECTOR: &str = "deploy/otel-collector/collector.yaml";
/// The JSON schemas kubeconform validates against (scripts/vendor-k8s-schemas).
pub const SCHEMAS: &str = "tests/deploy_manifests/schemas";
/// The compose file.
pub const COMPOSE: &str = "docker-compose.yml";
/// The operator's guide.
pub const GUIDE: &str = "README.md";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, as text.
pub fn read(relative: impl AsRef<Path>) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// Every document of a YAML file, with `<<` merge keys applied; empty documents dropped.
pub fn yaml_documents(relative: impl AsRef<Path>) -> Vec<Value> {
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

/// A YAML scalar as text (numbers and booleans included).
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// A YAML sequence, or nothing when absent.
pub fn seq(value: &Value) -> &[Value] {
    value.as_sequence().map(Vec::as_slice).unwrap_or_default()
}

/// A YAML scalar as a whole number.
pub fn int(value: &Value) -> u64 {
    text(value).parse().unwrap_or_else(|e| panic!("expected an integer, got {value:?}: {e}"))
}

/// `card-registrar <args> --help`, with an empty environment so no value leaks into the text.
pub fn help(args: &[&str]) -> String {
    let output = Command::new(BINARY).args(args).arg("--help").env_clear().output().expect("run the binary");
    assert!(output.status.success(), "`card-registrar {} --help` failed", args.join(" "));
    String::from_utf8(output.stdout).expect("help is UTF-8")
}

/// Environment variable -> default value, from one help text.
pub fn env_vars_in(help: &str) -> BTreeMap<String, Option<String>> {
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
pub fn accepted(subcommand: &[&str]) -> BTreeMap<String, Option<String>> {
    let mut vars = env_vars_in(&help(&[]));
    vars.extend(env_vars_in(&help(subcommand)));
    vars
}

/// The variables of every subcommand together.
pub fn accepted_anywhere() -> BTreeMap<String, Option<String>> {
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
pub fn simulator_env_vars() -> BTreeSet<String> {
    let source = read("d1-simulator/src/main.rs");
    let vars: BTreeSet<String> =
        source.split("env = \"").skip(1).filter_map(|s| s.split('"').next()).map(str::to_owned).collect();
    assert!(vars.contains("D1SIM_LISTEN"), "the simulator's env attributes were not found");
    vars
}

/// `SHUTDOWN_TIMEOUT_SECS`'s default, from `run --help`.
pub fn shutdown_default() -> u64 {
    let vars = accepted(&["run"]);
    let default =
        vars.get("SHUTDOWN_TIMEOUT_SECS").cloned().flatten().expect("SHUTDOWN_TIMEOUT_SECS has a default");
    default.parse().expect("a number of seconds")
}

/// The port of a `host:port` listen address.
pub fn port_of(listen: &str) -> u64 {
    listen.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {listen}"))
}

/// A tool scripts/bootstrap installs with `go install`: `$<ENV>`, else on PATH, else `$(go env GOPATH)/bin`.
pub fn go_tool(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file());
    if let Some(path) = on_path {
        return path;
    }
    let gopath = Command::new("go")
        .args(["env", "GOPATH"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}/go", std::env::var("HOME").unwrap_or_default()));
    let path = PathBuf::from(gopath).join("bin").join(name);
    assert!(path.is_file(), "{name} not found (run scripts/bootstrap, or set {env})");
    path
}

/// The Kubernetes version the chart is rendered for: the one the vendored schemas describe.
pub const KUBE_VERSION: &str = "1.34.0";

/// The chart variants the tests render: `--set` arguments of each.
pub const VARIANTS: &[&[&str]] = &[
    // The defaults: one Deployment, KEDA, the migrate hook, monitoring objects, NetworkPolicy.
    &[],
    // Ingest and dispatch apart.
    &["split.enabled=true"],
    // No KEDA (a fixed replica count), migrations at start-up, no Prometheus Operator.
    &[
        "keda.enabled=false",
        "migrations.job.enabled=false",
        "serviceMonitor.enabled=false",
        "prometheusRule.enabled=false",
        "networkPolicy.enabled=false",
    ],
    // A secured Kafka: KEDA authenticates, the worker mounts Kafka's files from a second Secret.
    &[
        "keda.authentication.enabled=true",
        "secrets.extraFiles[0].name=kafka",
        "secrets.extraFiles[0].secretName=card-registrar-kafka",
        "secrets.extraFiles[0].mountPath=/etc/card-registrar/kafka",
    ],
];

/// `helm template card-registrar <chart> --set ...`, as YAML text.
pub fn helm_template(sets: &[&str]) -> String {
    let mut command = Command::new(go_tool("helm", "HELM"));
    command.args(["template", "card-registrar", "--kube-version", KUBE_VERSION]).arg(root().join(CHART));
    for set in sets {
        command.args(["--set", set]);
    }
    let output = command.stderr(Stdio::piped()).output().expect("run helm");
    assert!(
        output.status.success(),
        "helm template {sets:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("helm prints UTF-8")
}

/// Every object of a YAML text, empty documents dropped.
pub fn yaml_objects(text: &str, origin: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| {
            Value::deserialize(document).unwrap_or_else(|e| panic!("{origin} is not valid YAML: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered objects of every variant, rendered once per test binary: (variant, objects).
pub fn rendered() -> &'static [(Vec<String>, Vec<Value>)] {
    static RENDERED: OnceLock<Vec<(Vec<String>, Vec<Value>)>> = OnceLock::new();
    RENDERED.get_or_init(|| {
        VARIANTS
            .iter()
            .map(|sets| {
                let objects = yaml_objects(&helm_template(sets), &format!("helm template {sets:?}"));
                (sets.iter().map(|s| (*s).to_owned()).collect(), objects)
            })
            .collect()
    })
}
