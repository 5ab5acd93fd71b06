-- Each card's event history. The primary key on event_id recognises a re-published event.
CREATE TABLE card_events (
    event_id     uuid        PRIMARY KEY,
    card_id      text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('CREATED', 'TOKENIZED', 'ORDERED')),
    outcome      text,
    consumer_id  text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    effect       text        NOT NULL,
    topic        text        NOT NULL,
    partition    integer     NOT NULL,
    "offset"     bigint      NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX card_events_by_card ON card_events (card_id, recorded_at);
