//! PostgreSQL store (sqlx): card records, history, outbox, dead letters, consumed offsets,
//! sealed consumer profiles and D1's card-operation notifications.
//!
//! Each function takes a transaction or a pool and does one thing; orchestration (what to lock,
//! in which order) belongs to the callers in `ingest` and `dispatch`. Nothing here decides: the
//! rules live in `core`. No clear PAN is ever written: card data is stored as received ciphertext.
//!
//! Plans: PostgreSQL switches a prepared statement to a cached generic plan after five runs and
//! keeps it. Planned while a table was small (a fresh deployment, the start of a backlog), a look-up
//! by an array of keys stayed a sequential scan as the table grew (4 ms a settle instead of 0.1 ms
//! after 15,000 cards). Those look-ups are therefore sent unprepared (`persistent(false)`), planned
//! for the table as it is at each run, and so is the settle's one-statement write (its outbox update
//! joins an array of ids, which a plan cached on an empty outbox did with a full scan); the other
//! writes and the claim keep their cached plans, which stay on their indexes (the same test runs
//! them). `store_apply::key_look_ups_first_run_on_empty_tables_still_use_their_indexes_after_growth`
//! checks every hot look-up.

pub mod cards;
pub mod dead_letters;
pub mod error;
pub mod history;
pub mod locks;
pub mod notifications;
pub mod offsets;
pub mod outbox;
pub mod profiles;
pub mod rate_bucket;
pub mod results;
pub mod settle;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, Executor, PgPool};

pub use error::StoreError;

/// The migrations in `migrations/`, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. The URL may carry `?options=-c search_path=...` to use another schema.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StoreError> {
    let options = connect_options(url)?;
    pool_options(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(|e| StoreError::db("connect to PostgreSQL", e))
}

/// Opens a pool without connecting yet, so a worker can start while PostgreSQL is down. Once
/// [`open_connections`] has filled it, the pool replaces connections it closes (idle or past their
/// lifetime) so that `min_connections` stay open.
///
/// Its connections carry `application_name` unless the URL names one, so `pg_stat_activity` shows
/// which worker holds which connection.
pub fn connect_lazy(
    url: &str,
    max_connections: u32,
    min_connections: u32,
    application_name: &str,
) -> Result<PgPool, StoreError> {
    let mut options = connect_options(url)?;
    if options.get_application_name().is_none() {
        options = options.application_name(application_name);
    }
    Ok(pool_options(max_connections)
        .min_connections(min_connections.min(max_connections))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Opens `n` connections of `pool` at once (as many as it allows) and puts them back idle, so that
/// the first burst of work does not wait for connects (a lazy pool opens none until asked).
pub async fn open_connections(pool: &PgPool, n: u32) -> Result<(), StoreError> {
    let opened = futures::future::join_all((0..n).map(|_| pool.acquire())).await;
    for connection in opened {
        connection.map_err(|e| StoreError::db("open the pool's connections", e))?;
    }
    Ok(())
}

/// A pool of at most `max_connections`. A connection's buffers keep the size of the largest message
/// it carried (an ingest batch: megabytes) until shrunk, and sqlx never shrinks them itself: each
/// connection gives the excess back when it returns to the pool (a no-op below 8 KiB).
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new().max_connections(max_connections).after_release(|conn, _| {
        Box::pin(async move {
            conn.shrink_buffers();
            Ok(true)
        })
    })
}

fn connect_options(url: &str) -> Result<PgConnectOptions, StoreError> {
    PgConnectOptions::from_str(url).map_err(|e| StoreError::db("parse DATABASE_URL", e))
}

/// Applies pending migrations.
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await.map_err(|e| StoreError::Migrate(Box::new(e)))
}

/// How many of the embedded migrations the database has not applied (successfully) yet. Needs
/// only SELECT on `_sqlx_migrations`, so the runtime role can ask when `migrate` runs as a job.
pub async fn unapplied_migrations(pool: &PgPool) -> Result<usize, StoreError> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await
            .map_err(|e| StoreError::db("read the applied migrations (_sqlx_migrations)", e))?;
    Ok(MIGRATOR.iter().filter(|m| applied.binary_search(&m.version).is_err()).count())
}

/// A statement being bound (the fragments that settle's single write composes bind through it).
pub(crate) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// `sql` with every parameter `$n` renumbered `$(n + by)`, to place a statement's text after
/// another's parameters in one composed statement. Our SQL has no dollar quoting.
pub(crate) fn shift_params(sql: &str, by: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..=at]);
        rest = &rest[at + 1..];
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        match rest[..digits].parse::<usize>() {
            Ok(n) => out.push_str(&(n + by).to_string()),
            Err(_) => out.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    out.push_str(rest);
    out
}

/// Whether PostgreSQL answers (for `/readyz`).
pub async fn ping(pool: &PgPool) -> bool {
    pool.execute("SELECT 1").await.is_ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn shift_params_renumbers_every_parameter_and_nothing_else() {
        assert_eq!(
            super::shift_params("SELECT $1::text[], $10, x$2 FROM t WHERE a = '$' AND b = $9", 10),
            "SELECT $11::text[], $20, x$12 FROM t WHERE a = '$' AND b = $19"
        );
        assert_eq!(super::shift_params("no parameters", 3), "no parameters");
    }
}
