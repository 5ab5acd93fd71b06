-- Offsets ingest never read, and why. A stored offset below the partition's low watermark means
-- the broker deleted messages before we read them (retention, an operator's delete-records):
-- ingest continues from the low watermark and records the gap here. An operator's
-- `card-registrar offsets reset` is recorded in offset_resets with who ran it and when.
CREATE TABLE offset_gaps (
    id          bigserial   PRIMARY KEY,
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    from_offset bigint      NOT NULL,
    to_offset   bigint      NOT NULL CHECK (to_offset > from_offset),
    detected_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX offset_gaps_by_partition ON offset_gaps (topic, partition, detected_at);

CREATE TABLE offset_resets (
    id          bigserial   PRIMARY KEY,
    group_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    from_offset bigint,
    to_offset   bigint      NOT NULL CHECK (to_offset >= 0),
    target      text        NOT NULL,
    operator    text        NOT NULL,
    reset_at    timestamptz NOT NULL DEFAULT now()
);
