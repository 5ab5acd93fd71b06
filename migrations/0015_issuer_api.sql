-- Issue 15: the API D1 calls on the bank's side.

-- Consumer profiles from the consumer-profile topic. The personal fields are kept only as a JWE
-- sealed to CONSUMER_DATA_KEYS (ciphertext); an erased profile keeps no personal data at all.
CREATE TABLE consumer_profiles (
    consumer_id    text        PRIMARY KEY,
    sealed_profile text,
    key_id         text,
    event_id       uuid,
    occurred_at    timestamptz,
    erased_at      timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((sealed_profile IS NULL) = (erased_at IS NOT NULL))
);

-- Card operation notifications from D1 (Notify Card Operations), one row per operationId: D1
-- retries, so a repeated operationId is stored once.
CREATE TABLE card_notifications (
    operation_id   text        PRIMARY KEY,
    card_id        text        NOT NULL,
    operation      text        NOT NULL,
    status         text        NOT NULL,
    start_time     text        NOT NULL,
    correlation_id text,
    item           jsonb       NOT NULL,
    confirms       boolean     NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX card_notifications_by_card ON card_notifications (card_id, received_at);

-- Who (which D1 operation) and when D1 said it knows the card; the first confirmation is kept.
ALTER TABLE cards
    ADD COLUMN d1_confirmed_at           timestamptz,
    ADD COLUMN d1_confirmed_by           text,
    ADD COLUMN d1_confirmed_operation_id text;
