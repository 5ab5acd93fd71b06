//! The deployment files agree with the binary they deploy: `Dockerfile`, `docker-compose.yml`,
//! the Helm chart `deploy/helm/card-registrar` (rendered with `helm template`, validated with
//! kubeconform against vendored schemas) and the operator's guide in `README.md`.
//!
//! Every environment variable they set must be one `card-registrar` accepts, read from its own
//! `--help` (so renaming a setting breaks this test, not a deployment); probes must hit the admin
//! endpoints; grace periods must outlast the shutdown timeout; autoscaling must stay within the
//! partitions; compose dependencies and key files must exist; every command the guide shows must
//! parse. No Docker engine or cluster is needed: the files are parsed, the binary is asked; helm
//! and kubeconform come from scripts/bootstrap (`go install`).

mod compose;
mod dockerfile;
mod guide;
mod helm;
mod support;
