//! The real services answer: a message through the real broker, a row through real PostgreSQL.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::helpers::*;

#[tokio::test]
async fn a_message_produced_to_the_real_broker_is_consumed_back() {
    let topics = TestTopics::new(1).await;
    let producer: FutureProducer =
        rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    producer
        .send(FutureRecord::to(&topics.created).key("k").payload("hello"), Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("smoke-{}", uuid::Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topics.created]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await.unwrap().unwrap();
    assert_eq!((m.key(), m.payload()), (Some(&b"k"[..]), Some(&b"hello"[..])));
}

#[tokio::test]
async fn a_row_written_to_real_postgres_is_read_back_in_its_own_schema() {
    let db = TestDb::new().await;
    sqlx::query("CREATE TABLE smoke (id int PRIMARY KEY, v text)").execute(&db.pool).await.unwrap();
    sqlx::query("INSERT INTO smoke VALUES (1, 'hello')").execute(&db.pool).await.unwrap();
    let (v, schema): (String, String) =
        sqlx::query_as("SELECT v, current_schema()::text FROM smoke").fetch_one(&db.pool).await.unwrap();
    assert_eq!((v.as_str(), schema.as_str()), ("hello", db.schema.as_str()));
}
