-- The fleet's shared D1 request budget (D1_MAX_RPS for every dispatching replica together): a token
-- bucket that replicas draw permits from, one statement per batch of permits. It is refilled from
-- PostgreSQL's clock at the rate the drawing replica states, holds at most the capacity it states,
-- and never goes negative; the row lock serialises the draws.
--
-- UNLOGGED: a draw then commits without waiting for a WAL flush (the budget is drawn from tens of
-- times a second and is worthless after a crash). A crash or a failover empties the table; the next
-- draw puts the row back with no tokens, so the fleet loses at most a moment's budget.
CREATE UNLOGGED TABLE d1_rate_bucket (
    name        text             PRIMARY KEY,
    tokens      double precision NOT NULL CHECK (tokens >= 0),
    refilled_at timestamptz      NOT NULL
);
