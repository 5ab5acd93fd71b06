//! The fleet's D1 token bucket (`d1_rate_bucket`, one row): every dispatching replica draws its
//! permits here, so `D1_MAX_RPS` holds for all of them together.
//!
//! One statement per draw (the table is unlogged, so it commits without a WAL flush; a draw that
//! finds the row gone after a crash puts it back, empty). The row is locked (`FOR UPDATE`, which re-reads the newest version after
//! waiting), refilled for the time since the last draw at the caller's rate, capped at the caller's
//! capacity, and at most the whole tokens in it are granted. Time is PostgreSQL's `now()` and only
//! moves forward here (`GREATEST`), so a transaction that started before the previous draw refills
//! nothing and a clock stepped back refills nothing until it catches up. Hence, over any interval,
//! the permits granted fleet-wide are at most `capacity + rate x its length`.

use sqlx::PgPool;

use super::StoreError;

/// The outcome of one draw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Draw {
    /// Permits granted (0 when less than one token was available).
    pub granted: u32,
    /// Tokens left in the bucket after the draw (fractional).
    pub tokens_left: f64,
}

/// Takes up to `want` permits from the bucket refilled at `rate` per second, holding at most
/// `capacity` tokens.
pub async fn draw(pool: &PgPool, want: u32, rate: f64, capacity: f64) -> Result<Draw, StoreError> {
    let drawn: Option<(i32, f64)> = sqlx::query_as(
        "WITH a AS (
             SELECT LEAST($3, tokens + $2 * GREATEST(0, EXTRACT(EPOCH FROM (now() - refilled_at))::float8)) AS avail
             FROM d1_rate_bucket WHERE name = 'd1' FOR UPDATE
         )
         UPDATE d1_rate_bucket b
            SET tokens = a.avail - LEAST($1, floor(a.avail)),
                refilled_at = GREATEST(b.refilled_at, now())
           FROM a
          WHERE b.name = 'd1'
         RETURNING LEAST($1, floor(a.avail))::integer, b.tokens",
    )
    .bind(f64::from(want))
    .bind(rate)
    .bind(capacity)
    .fetch_optional(pool)
    .await
    .map_err(|e| StoreError::db("draw from the fleet's D1 rate bucket", e))?;
    match drawn {
        Some((granted, tokens_left)) => {
            Ok(Draw { granted: u32::try_from(granted).unwrap_or(0), tokens_left })
        }
        None => {
            // The unlogged table lost its row (a crash, a failover): put it back, empty.
            sqlx::query(
                "INSERT INTO d1_rate_bucket (name, tokens, refilled_at) VALUES ('d1', 0, now())
                 ON CONFLICT (name) DO NOTHING",
            )
            .execute(pool)
            .await
            .map_err(|e| StoreError::db("create the fleet's D1 rate bucket", e))?;
            Ok(Draw { granted: 0, tokens_left: 0.0 })
        }
    }
}
