-- The fleet's shared D1 request budget (D1_MAX_RPS for every dispatching replica together): a token
-- bucket that replicas draw permits from, one UPDATE per batch of permits. It is refilled from
-- PostgreSQL's clock at the rate the drawing replica states, holds at most the capacity it states,
-- and never goes negative; the row lock serialises the draws.
CREATE TABLE d1_rate_bucket (
    name        text             PRIMARY KEY,
    tokens      double precision NOT NULL CHECK (tokens >= 0),
    refilled_at timestamptz      NOT NULL
);

INSERT INTO d1_rate_bucket (name, tokens, refilled_at) VALUES ('d1', 0, now());
