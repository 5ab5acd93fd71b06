-- Consumers (card holders) seen, by the consumerId D1 knows them by.
CREATE TABLE consumers (
    consumer_id   text        PRIMARY KEY,
    first_seen_at timestamptz NOT NULL DEFAULT now()
);
