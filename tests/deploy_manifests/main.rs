//! The deployment files agree with the binary they deploy: `Dockerfile`, `docker-compose.yml`,
//! `deploy/kubernetes/` and the operator's guide in `README.md`.
//!
//! Every environment variable they set must be one `card-registrar` accepts, read from its own
//! `--help` (so renaming a setting breaks this test, not a deployment); probes must hit the admin
//! endpoints; grace periods must outlast the shutdown timeout; autoscaling must stay within the
//! partitions; compose dependencies and key files must exist; every command the guide shows must
//! parse. No Docker engine or cluster is needed: the files are parsed, the binary is asked.

mod compose;
mod dockerfile;
mod guide;
mod kubernetes;
mod support;
