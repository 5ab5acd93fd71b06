//! The database ceiling: `pgbench` running, per transaction, the statements ingest runs for one
//! batch (card locks, duplicate lookup, record and call lookup, consumers, card upsert, history,
//! outbox for created cards, stored offset), with the rows generated server-side by
//! `generate_series`, so no client work is counted. One pgbench client per partition.

use std::process::Command;

use anyhow::Context as _;
use card_registrar::store::outbox::NOTIFY_CHANNEL;

use super::db::Schema;

/// Which batch the script imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// Approved tokenizations of new cards: REGISTERED records, history, no call.
    Tokenized,
    /// New cards: PENDING records holding the JWE, history, one outbox row each and a NOTIFY.
    Created,
}

/// What pgbench reported.
#[derive(Debug)]
pub struct PgbenchResult {
    /// Transactions (batches) per second.
    pub tps: f64,
    /// Rows per second (= events per second at that batch size).
    pub rows_per_sec: f64,
    /// Mean transaction latency, ms.
    pub latency_ms: f64,
}

/// Runs `script` with batches of `batch` rows in `schema`: `clients` concurrent clients, enough
/// transactions for about `rows` rows in all. `jwe_len` sizes the stored JWE of created cards.
pub async fn run(
    schema: &Schema,
    script: Script,
    batch: usize,
    clients: usize,
    rows: usize,
    jwe_len: usize,
) -> anyhow::Result<PgbenchResult> {
    prepare_schema(schema, clients).await?;
    let file = tempfile::Builder::new().suffix(".sql").tempfile()?;
    std::fs::write(file.path(), sql(script))?;
    let transactions = rows.div_ceil(clients * batch).max(1);
    let pgbench = std::env::var("PGBENCH").unwrap_or_else(|_| "pgbench".into());
    let output = Command::new(&pgbench)
        .args(["--no-vacuum", "--protocol=prepared", "--jobs=2"])
        .arg(format!("--client={clients}"))
        .arg(format!("--transactions={transactions}"))
        .arg(format!("--define=n={batch}"))
        .arg(format!("--define=jwe={jwe_len}"))
        .arg(format!("--file={}", file.path().display()))
        .arg(&schema.url)
        .output()
        .with_context(|| format!("run {pgbench} (set PGBENCH to its path)"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "pgbench failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let tps = figure(&stdout, "tps = ").context("no tps line in pgbench output")?;
    let latency_ms = figure(&stdout, "latency average = ").context("no latency line in pgbench output")?;
    Ok(PgbenchResult { tps, rows_per_sec: tps * batch as f64, latency_ms })
}

/// The number after `prefix` on the first line that starts with it.
fn figure(stdout: &str, prefix: &str) -> Option<f64> {
    let line = stdout.lines().find_map(|l| l.strip_prefix(prefix))?;
    line.split_whitespace().next()?.parse().ok()
}

/// A batch counter for unique card ids, and one stored offset per client (= partition).
async fn prepare_schema(schema: &Schema, clients: usize) -> anyhow::Result<()> {
    sqlx::query("CREATE SEQUENCE IF NOT EXISTS pgbench_batch").execute(&schema.pool).await?;
    sqlx::query(
        "INSERT INTO consumer_offsets (group_id, topic, partition, next_offset)
         SELECT 'pgbench', 'pgbench', p, 0 FROM generate_series(0, $1 - 1) AS p ON CONFLICT DO NOTHING",
    )
    .bind(clients as i32)
    .execute(&schema.pool)
    .await?;
    Ok(())
}

/// The script: the statements of `apply_batch` in its order, for `:n` new cards of batch `:b`.
fn sql(script: Script) -> String {
    // Card i of batch b is `pgb-<b>-<i>`; consumers hold two cards each, as in the workload.
    let card = "'pgb-' || :b::bigint || '-' || g";
    let consumer = "'pgb-c-' || :b::bigint || '-' || (g / 2)";
    let cards = "generate_series(1, :n::int) AS g";
    let (state, source, product, jwe, initial, kind, outcome, effect) = match script {
        Script::Tokenized => (
            "'REGISTERED'",
            "'IMPLICIT_TOKENIZATION'",
            "NULL",
            "NULL",
            "NULL",
            "'TOKENIZED'",
            "'APPROVED'",
            "'REGISTERED_IMPLICITLY'",
        ),
        Script::Created => (
            "'PENDING'",
            "NULL",
            "'prod-classic'",
            "repeat('x', :jwe::int)",
            "'ACTIVE'",
            "'CREATED'",
            "NULL",
            "'ENQUEUED'",
        ),
    };
    let registered_at = if script == Script::Tokenized { "now()" } else { "NULL" };
    let mut sql = format!(
        "SELECT nextval('pgbench_batch') AS b \\gset
BEGIN;
SELECT pg_advisory_xact_lock(k) FROM (
    SELECT DISTINCT hashtextextended({card}, 7919) AS k FROM {cards} ORDER BY k) AS keys;
SELECT event_id FROM card_events WHERE event_id = ANY(ARRAY(SELECT gen_random_uuid() FROM {cards}));
SELECT card_id, status FROM outbox
    WHERE kind = 'REGISTER_CARD' AND card_id = ANY(ARRAY(SELECT {card} FROM {cards})) ORDER BY card_id FOR UPDATE;
SELECT card_id, state FROM cards WHERE card_id = ANY(ARRAY(SELECT {card} FROM {cards}));
INSERT INTO consumers (consumer_id) SELECT DISTINCT {consumer} AS c FROM {cards} ORDER BY c ON CONFLICT DO NOTHING;
INSERT INTO cards (card_id, consumer_id, state, source, card_product_id, encrypted_card,
                   initial_state, implicit_while_in_flight, failure, registered_at)
    SELECT {card}, {consumer}, {state}, {source}, {product}, {jwe}, {initial}, NULL, NULL, {registered_at} FROM {cards}
    ON CONFLICT (card_id) DO UPDATE SET
        consumer_id = EXCLUDED.consumer_id, state = EXCLUDED.state, source = EXCLUDED.source,
        card_product_id = EXCLUDED.card_product_id, encrypted_card = EXCLUDED.encrypted_card,
        initial_state = EXCLUDED.initial_state, implicit_while_in_flight = EXCLUDED.implicit_while_in_flight,
        failure = EXCLUDED.failure, registered_at = EXCLUDED.registered_at,
        version = cards.version + 1, updated_at = now();
INSERT INTO card_events (event_id, card_id, kind, outcome, consumer_id, occurred_at, effect, topic, partition, \"offset\")
    SELECT gen_random_uuid(), {card}, {kind}, {outcome}, {consumer}, now(), {effect}, 'pgbench', :client_id::int,
           :b::bigint * :n::int + g FROM {cards}
    ON CONFLICT (event_id) DO NOTHING;
"
    );
    if script == Script::Created {
        sql.push_str(&format!(
            "INSERT INTO outbox (id, kind, card_id, payload, status, correlation_id)
    SELECT gen_random_uuid(), 'REGISTER_CARD', {card},
           jsonb_build_object('card_id', {card}, 'consumer_id', {consumer}, 'card_product_id', 'prod-classic',
                              'encrypted_card', repeat('x', :jwe::int), 'state', 'ACTIVE'),
           'PENDING', 'cr-' || {card} FROM {cards}
    ON CONFLICT (card_id) WHERE kind = 'REGISTER_CARD' DO NOTHING;
SELECT pg_notify('{NOTIFY_CHANNEL}', '');
"
        ));
    }
    sql.push_str(
        "UPDATE consumer_offsets SET next_offset = next_offset + :n::int, updated_at = now()
    WHERE group_id = 'pgbench' AND topic = 'pgbench' AND partition = :client_id::int;
COMMIT;
",
    );
    sql
}
