-- One row per D1 call to make. The payload holds ids and the JWE we received, never a clear PAN.
CREATE TABLE outbox (
    id               uuid        PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('REGISTER_CARD')),
    card_id          text        NOT NULL,
    payload          jsonb       NOT NULL,
    status           text        NOT NULL CHECK (status IN ('PENDING', 'IN_FLIGHT', 'DONE', 'CANCELLED', 'PARKED')),
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    fence            bigint      NOT NULL DEFAULT 0,
    needs_reconcile  boolean     NOT NULL DEFAULT false,
    last_error       text,
    traceparent      text,
    tracestate       text,
    correlation_id   text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Start of the current series of attempts (enqueue, or an operator's retry): the age limit counts from here.
    attempts_since   timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz
);

-- At most one registration row per card, whatever happens: the first guard against a second PUT.
CREATE UNIQUE INDEX outbox_one_registration_per_card ON outbox (card_id) WHERE kind = 'REGISTER_CARD';
-- The dispatch claim: due rows, oldest first. Partial, so it stays small at millions of rows.
CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = 'PENDING';
-- Crashed workers' leases, reclaimable once expired.
CREATE INDEX outbox_leased ON outbox (lease_expires_at) WHERE status = 'IN_FLIGHT';
-- Retention of finished rows.
CREATE INDEX outbox_finished ON outbox (finished_at) WHERE status IN ('DONE', 'CANCELLED');
-- Operators' view of parked rows.
CREATE INDEX outbox_parked ON outbox (updated_at) WHERE status = 'PARKED';
