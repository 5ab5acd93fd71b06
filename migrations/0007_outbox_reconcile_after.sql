-- Earliest time D1 may be asked (Get Card) about this row: any PUT an attempt sent is committed or
-- abandoned by D1 within DISPATCH_RECONCILE_DELAY_MS. Set by PostgreSQL's clock when an attempt ends
-- (now() + delay); an operator's retry never makes the row due before it.
ALTER TABLE outbox ADD COLUMN reconcile_after timestamptz;
