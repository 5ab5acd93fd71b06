//! The one integration-test binary: every module runs against real PostgreSQL and Kafka
//! (found through `DATABASE_URL` and `KAFKA_BROKERS`), each test with its own schema and topics.

mod helpers;
mod store_apply;
