//! A PostgreSQL schema of the bench's own, migrated, dropped afterwards; and the counts a bench
//! checks before it trusts a figure.

use card_registrar::store;
use sqlx::PgPool;
use uuid::Uuid;

/// A fresh schema with the service's tables; dropped with everything in it on drop.
pub struct Schema {
    /// Connections whose `search_path` is the schema.
    pub pool: PgPool,
    /// The schema name.
    pub name: String,
    /// A `DATABASE_URL` pointing at the schema (for pgbench).
    pub url: String,
    base: String,
}

impl Schema {
    /// Creates and migrates `b_<random>` in the database at `base`, with a pool of `connections`, all open.
    pub async fn create(base: &str, connections: u32) -> anyhow::Result<Self> {
        let name = format!("b_{}", Uuid::new_v4().simple());
        let admin = store::connect(base, 1).await?;
        sqlx::query(&format!("CREATE SCHEMA {name}")).execute(&admin).await?;
        admin.close().await;
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}options=-c%20search_path%3D{name}");
        let pool = store::connect(&url, connections).await?;
        store::migrate(&pool).await?;
        // All open before any figure, as `card-registrar run` keeps its pool (DATABASE_MIN_CONNECTIONS).
        store::open_connections(&pool, connections).await?;
        Ok(Self { pool, name, url, base: base.to_owned() })
    }

    /// Rows in `table` (a fixed table name of the service), optionally filtered by `condition`.
    pub async fn count(&self, table: &str, condition: &str) -> anyhow::Result<i64> {
        let filter = if condition.is_empty() { String::new() } else { format!(" WHERE {condition}") };
        let (n,): (i64,) =
            sqlx::query_as(&format!("SELECT count(*) FROM {table}{filter}")).fetch_one(&self.pool).await?;
        Ok(n)
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (base, name) = (self.base.clone(), self.name.clone());
        // Drop may run inside a runtime that cannot block: use a thread with its own runtime.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async move {
                let admin = store::connect(&base, 1).await?;
                // Connections of the bench's pool may still be closing: do not wait on their locks forever.
                sqlx::query("SET lock_timeout = '10s'").execute(&admin).await?;
                sqlx::query(&format!("DROP SCHEMA IF EXISTS {name} CASCADE")).execute(&admin).await?;
                admin.close().await;
                anyhow::Ok(())
            })
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("could not drop schema {}: {e:#}", self.name),
            Err(_) => eprintln!("could not drop schema {}: cleanup thread panicked", self.name),
        }
    }
}

/// The server settings that decide what a commit costs, for the report header.
pub async fn durability(base: &str) -> anyhow::Result<String> {
    let admin = store::connect(base, 1).await?;
    let mut parts = Vec::new();
    for setting in ["synchronous_commit", "fsync", "shared_buffers", "max_wal_size"] {
        let (value,): (String,) = sqlx::query_as(&format!("SHOW {setting}")).fetch_one(&admin).await?;
        parts.push(format!("{setting}={value}"));
    }
    admin.close().await;
    Ok(parts.join(" "))
}
