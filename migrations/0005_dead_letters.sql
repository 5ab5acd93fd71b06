-- Messages that could not be applied. The original key, headers and bytes are kept only inside
-- `envelope`, a JWE to our own card-data key: a bad message may hold a clear PAN anywhere.
CREATE TABLE dead_letters (
    id            bigserial   PRIMARY KEY,
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    reason        text        NOT NULL,
    detail        text        NOT NULL,
    card_id       text,
    event_id      uuid,
    envelope      text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    replay_status text        NOT NULL DEFAULT 'NEW' CHECK (replay_status IN ('NEW', 'REPLAYED', 'STILL_FAILING')),
    replayed_at   timestamptz,
    replay_detail text,
    UNIQUE (topic, partition, "offset")
);

CREATE INDEX dead_letters_by_reason ON dead_letters (reason, created_at);
CREATE INDEX dead_letters_by_card ON dead_letters (card_id) WHERE card_id IS NOT NULL;
