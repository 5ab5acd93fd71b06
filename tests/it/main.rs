//! The one integration-test binary. Each module tests one boundary of the service against a real
//! counterpart: PostgreSQL and Kafka (found through `DATABASE_URL` and `KAFKA_BROKERS`, each test
//! with its own schema and topics), an independent JOSE implementation, the Avro reference
//! implementation and the Kafka Java client, the D1 simulator.

mod avro_interop;
mod cli;
mod crash;
mod d1_client;
mod dispatch;
mod exactly_once;
mod fleet_rate;
mod helpers;
mod hostile;
mod ingest;
mod issuer_api;
mod issuer_pki;
mod jwe_interop;
mod least_privilege;
mod offsets;
mod registry_tls;
mod results;
mod secure_kafka;
mod smoke;
mod store_apply;
mod timing;
mod worker;
