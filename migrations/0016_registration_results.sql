-- What became of each card, for the card-registration-results topic: written in the same
-- transaction as the state change that causes it (the outbox pattern), published by the relay.
-- Per card, rows are inserted under the card's advisory lock, so `seq` order is the card's commit
-- order; the relay publishes a card's row only once every earlier row of that card is published.
-- Holds ids, codes and operator text, never a PAN or card data.
CREATE TABLE registration_results (
    seq              bigserial   PRIMARY KEY,
    result_id        uuid        NOT NULL UNIQUE,
    card_id          text,
    consumer_id      text,
    outcome          text        NOT NULL CHECK (outcome IN ('REGISTERED_EXPLICIT', 'REGISTERED_IMPLICIT_TOKENIZATION',
                                 'REGISTERED_IMPLICIT_ORDER', 'CONFIRMED_BY_D1', 'FAILED', 'REJECTED', 'CANCELLED')),
    error_code       text,
    reason           text,
    event_id         uuid,
    correlation_id   text,
    occurred_at      timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    attempts         integer     NOT NULL DEFAULT 0,
    published_at     timestamptz
);

-- The relay's claim: unpublished rows in order, and "is an earlier row of this card unpublished?".
CREATE INDEX registration_results_pending ON registration_results (seq) WHERE published_at IS NULL;
CREATE INDEX registration_results_pending_by_card ON registration_results (card_id, seq) WHERE published_at IS NULL;
-- Retention of published rows.
CREATE INDEX registration_results_published ON registration_results (published_at) WHERE published_at IS NOT NULL;
