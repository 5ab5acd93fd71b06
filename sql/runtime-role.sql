-- The runtime role of card-registrar: only the DML the worker and the operator commands need, no DDL.
--
-- Migrations run separately, as the schema owner (`card-registrar migrate`, a Kubernetes Job or Helm
-- hook), and the worker runs with MIGRATE_ON_START=false (or `run --no-migrate`) as this role.
-- Create the role first (its password comes from your secret store), then, as the schema owner:
--
--   psql "$OWNER_DATABASE_URL" -v runtime_role=card_registrar_app -v schema=public -f sql/runtime-role.sql
--
-- Run it again after each new migration: a new table needs its line here (a test checks that every
-- table the migrations create is listed).

-- No one but the owner creates objects in the schema (PostgreSQL < 15 lets PUBLIC do it in `public`).
REVOKE CREATE ON SCHEMA :"schema" FROM PUBLIC;
GRANT USAGE ON SCHEMA :"schema" TO :"runtime_role";

-- Read by `run --no-migrate` to wait until the schema is current.
GRANT SELECT ON :"schema"._sqlx_migrations TO :"runtime_role";

-- Card records: created and updated, never deleted.
GRANT SELECT, INSERT, UPDATE ON :"schema".cards TO :"runtime_role";
-- History is append-only: no UPDATE, no DELETE.
GRANT SELECT, INSERT ON :"schema".card_events TO :"runtime_role";
GRANT SELECT, INSERT ON :"schema".consumers TO :"runtime_role";
-- Outbox rows are claimed, finished and, past retention, deleted.
GRANT SELECT, INSERT, UPDATE, DELETE ON :"schema".outbox TO :"runtime_role";
-- Dead letters are kept; replay marks them.
GRANT SELECT, INSERT, UPDATE ON :"schema".dead_letters TO :"runtime_role";
GRANT USAGE ON SEQUENCE :"schema".dead_letters_id_seq TO :"runtime_role";
GRANT SELECT, INSERT, UPDATE ON :"schema".consumer_offsets TO :"runtime_role";
-- Offsets never read (retention, a recreated topic) and operators' resets: recorded, never changed.
GRANT SELECT, INSERT ON :"schema".offset_gaps TO :"runtime_role";
GRANT USAGE ON SEQUENCE :"schema".offset_gaps_id_seq TO :"runtime_role";
GRANT SELECT, INSERT ON :"schema".offset_resets TO :"runtime_role";
GRANT USAGE ON SEQUENCE :"schema".offset_resets_id_seq TO :"runtime_role";
-- Registration results (issue 16): written with the state change, leased and marked by the relay,
-- deleted past retention.
GRANT SELECT, INSERT, UPDATE, DELETE ON :"schema".registration_results TO :"runtime_role";
GRANT USAGE ON SEQUENCE :"schema".registration_results_seq_seq TO :"runtime_role";
-- Consumer profiles (sealed): upserted by ingest, erased in place by a tombstone (no DELETE).
GRANT SELECT, INSERT, UPDATE ON :"schema".consumer_profiles TO :"runtime_role";
-- D1's card-operation notifications: stored once per operationId, never changed.
GRANT SELECT, INSERT ON :"schema".card_notifications TO :"runtime_role";
-- The fleet's D1 rate budget: one row, drawn from by every dispatching replica (and put back by the
-- first draw after a crash emptied the unlogged table).
GRANT SELECT, INSERT, UPDATE ON :"schema".d1_rate_bucket TO :"runtime_role";
