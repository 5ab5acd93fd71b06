//! The Grafana dashboard and the Prometheus alert rules use only metric names from `metrics.rs`, so
//! renaming a metric breaks this test rather than a dashboard in production.

use std::collections::BTreeSet;
use std::path::Path;

use super::metrics::{ALL, HISTOGRAMS, describe};

const DASHBOARD: &str = "deploy/grafana/card-registrar.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";

fn read(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("cannot read {}: {e}", full.display()))
}

/// Every PromQL expression of the dashboard, rows' nested panels included.
fn dashboard_exprs() -> Vec<String> {
    fn walk(panels: &[serde_json::Value], out: &mut Vec<String>) {
        for panel in panels {
            for target in panel["targets"].as_array().into_iter().flatten() {
                out.extend(target["expr"].as_str().map(str::to_owned));
            }
            walk(panel["panels"].as_array().map(Vec::as_slice).unwrap_or_default(), out);
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(&read(DASHBOARD)).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    walk(dashboard["panels"].as_array().expect("panels"), &mut exprs);
    exprs
}

/// Every alert rule as (name, expr, summary, description).
fn alert_rules() -> Vec<(String, String, String, String)> {
    let alerts: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(ALERTS)).expect("alerts are YAML");
    let text = |v: &serde_yaml_ng::Value| v.as_str().unwrap_or_default().to_owned();
    let mut rules = Vec::new();
    for group in alerts["groups"].as_sequence().expect("groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let annotations = &rule["annotations"];
            rules.push((
                text(&rule["alert"]),
                text(&rule["expr"]),
                text(&annotations["summary"]),
                text(&annotations["description"]),
            ));
        }
    }
    rules
}

/// The `card_registrar_*` metric names an expression uses.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.match_indices("card_registrar_")
        .map(|(at, _)| {
            expr[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect()
}

/// The constant a series name belongs to (`_bucket`, `_sum`, `_count` of a histogram included).
fn known(series: &str) -> Option<&'static str> {
    ALL.iter().copied().find(|m| *m == series).or_else(|| {
        HISTOGRAMS.iter().copied().find(|h| {
            ["_bucket", "_sum", "_count"].iter().any(|suffix| series.strip_suffix(suffix) == Some(*h))
        })
    })
}

#[test]
fn dashboard_and_alerts_use_only_metric_names_from_metrics_rs() {
    let exprs: Vec<String> =
        dashboard_exprs().into_iter().chain(alert_rules().into_iter().map(|(_, expr, _, _)| expr)).collect();

    let unknown: BTreeSet<String> =
        exprs.iter().flat_map(|e| metric_names(e)).filter(|name| known(name).is_none()).collect();

    assert!(!exprs.is_empty());
    assert!(unknown.is_empty(), "not in src/telemetry/metrics.rs: {unknown:?}");
}

#[test]
fn the_dashboard_shows_every_metric() {
    let used: BTreeSet<&str> =
        dashboard_exprs().iter().flat_map(|e| metric_names(e)).filter_map(|n| known(&n)).collect();

    let missing: Vec<&str> = ALL.iter().copied().filter(|m| !used.contains(m)).collect();

    assert!(missing.is_empty(), "no dashboard panel for {missing:?}");
}

#[test]
fn every_alert_says_what_it_means_and_what_to_do() {
    let rules = alert_rules();
    let names: BTreeSet<&str> = rules.iter().map(|(name, ..)| name.as_str()).collect();

    for (name, expr, summary, description) in &rules {
        assert!(!metric_names(expr).is_empty(), "{name}: expression uses none of our metrics");
        assert!(!summary.is_empty() && !description.is_empty(), "{name}: summary and description required");
    }
    let expected = [
        "CardRegistrarConsumerLagHigh",
        "CardRegistrarOutboxOldestDueRowOld",
        "CardRegistrarOutboxRowsParked",
        "CardRegistrarDeadLetterRateHigh",
        "CardRegistrarCircuitBreakerOpen",
        "CardRegistrarNotReady",
        "CardRegistrarOffsetsLost",
        "CardRegistrarPartitionHeld",
        "CardRegistrarResultsRelayLagging",
    ];
    assert_eq!(names, expected.into_iter().collect());
}

#[test]
fn no_expression_filters_or_groups_by_a_card_or_consumer_identifier() {
    let exprs: Vec<String> =
        dashboard_exprs().into_iter().chain(alert_rules().into_iter().map(|(_, expr, _, _)| expr)).collect();

    for expr in &exprs {
        for label in ["card_id", "consumer_id", "cardId", "consumerId", "pan"] {
            assert!(
                !expr.split(|c: char| !c.is_alphanumeric() && c != '_').any(|t| t == label),
                "{label}: {expr}"
            );
        }
    }
}

/// Records which names `describe()` describes, and as what kind.
#[derive(Default)]
struct Descriptions(std::sync::Mutex<Vec<(&'static str, String)>>);

impl Descriptions {
    fn note(&self, kind: &'static str, key: metrics::KeyName) {
        self.0.lock().expect("lock").push((kind, key.as_str().to_owned()));
    }
}

impl metrics::Recorder for Descriptions {
    fn describe_counter(&self, key: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {
        self.note("counter", key);
    }
    fn describe_gauge(&self, key: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {
        self.note("gauge", key);
    }
    fn describe_histogram(&self, key: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {
        self.note("histogram", key);
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn describe_covers_exactly_the_listed_metrics_and_histograms() {
    let recorder = Descriptions::default();

    metrics::with_local_recorder(&recorder, describe);

    let described = recorder.0.into_inner().expect("lock");
    let names: BTreeSet<&str> = described.iter().map(|(_, n)| n.as_str()).collect();
    let histograms: BTreeSet<&str> =
        described.iter().filter(|(kind, _)| *kind == "histogram").map(|(_, n)| n.as_str()).collect();
    assert_eq!(described.len(), ALL.len(), "each metric described once");
    assert_eq!(names, ALL.into_iter().collect());
    assert_eq!(histograms, HISTOGRAMS.into_iter().collect());
}
