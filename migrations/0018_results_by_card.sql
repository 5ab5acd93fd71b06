-- The relay hands out a card's oldest unpublished result only, which it checks by looking up the
-- card's results (see store::results::claim). That look-up now reads every result of the card,
-- published or not, through this index, and tests "unpublished" on the rows it found: asked for
-- unpublished rows directly, PostgreSQL could also answer from registration_results_pending (seq),
-- and did so whenever its statistics had been gathered with every result published (the usual
-- state), scanning the whole queue for each row it claimed. A card has a handful of results within
-- the retention period, so the wider index costs little.
CREATE INDEX registration_results_by_card ON registration_results (card_id, seq);
DROP INDEX registration_results_pending_by_card;
