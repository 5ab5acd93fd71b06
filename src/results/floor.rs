//! Where the relay's next claim starts in the results queue.
//!
//! Publishing a row leaves its entry in the queue's index (`registration_results_pending`) until
//! VACUUM, so a claim from the start of the queue reads every result published since the last
//! VACUUM before it finds a waiting one: on a 1,000,000-card backlog, about 4,000 buffers a claim
//! of 100, and with a large table VACUUM comes seldom. So the relay starts its claims at the lowest
//! row it last claimed. A row can still appear below that floor: `seq` is taken at insert, so a
//! transaction that commits late brings a lower one; a row leased by a relay that died, or given
//! back to wait, comes due again; another relay's row is skipped while it holds it. So a claim
//! reads the whole queue again once the last one that did is [`Floor`]'s period old: such a row
//! waits that long at most. The floor never changes which row of a card goes first: the claim's
//! card's-oldest test reads all of the card's rows (`store::results::claim`).

use std::time::Duration;

use tokio::time::Instant;

/// The floor of one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    /// Longest time between two claims of the whole queue.
    every: Duration,
    /// The lowest `seq` the last claim that found rows handed out (0: none yet).
    seq: i64,
    /// When a claim last read the whole queue; `None`: never.
    whole_queue_at: Option<Instant>,
}

impl Floor {
    /// A floor that sends a claim to the whole queue at least `every`.
    pub fn new(every: Duration) -> Self {
        Self { every, seq: 0, whole_queue_at: None }
    }

    /// The `seq` the next claim starts from at `now`: 0 (the whole queue) when no claim read the
    /// whole queue for `every`, else the floor.
    pub fn start(&self, now: Instant) -> i64 {
        match self.whole_queue_at {
            Some(at) if now.saturating_duration_since(at) < self.every => self.seq,
            _ => 0,
        }
    }

    /// Records a claim that started at `from`, at `now`, and handed out rows from `lowest` (`None`
    /// when it found none: the floor stays).
    pub fn claimed(&mut self, from: i64, lowest: Option<i64>, now: Instant) {
        if from == 0 {
            self.whole_queue_at = Some(now);
        }
        if let Some(lowest) = lowest {
            self.seq = lowest;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY: Duration = Duration::from_secs(1);

    #[test]
    fn claims_start_at_the_lowest_row_last_handed_out_and_stay_there_when_none_was() {
        let t0 = Instant::now();
        let mut floor = Floor::new(EVERY);
        assert_eq!(floor.start(t0), 0);
        floor.claimed(0, Some(500), t0);
        assert_eq!(floor.start(t0), 500);
        floor.claimed(500, Some(510), t0 + EVERY / 10);
        assert_eq!(floor.start(t0 + EVERY / 5), 510);
        floor.claimed(510, None, t0 + EVERY / 4);
        assert_eq!(floor.start(t0 + EVERY / 2), 510, "nothing found: the floor stays");
    }

    #[test]
    fn the_whole_queue_is_read_again_after_the_period_and_can_lower_the_floor() {
        let t0 = Instant::now();
        let mut floor = Floor::new(EVERY);
        floor.claimed(0, Some(500), t0);
        // Claims from the floor do not restart the period: only a claim of the whole queue does.
        floor.claimed(500, Some(600), t0 + EVERY / 2);
        assert_eq!(floor.start(t0 + EVERY / 2), 600);
        assert_eq!(floor.start(t0 + EVERY), 0);
        floor.claimed(0, Some(450), t0 + EVERY);
        assert_eq!(floor.start(t0 + EVERY), 450, "a late commit below the old floor");
        floor.claimed(0, None, t0 + EVERY * 2);
        assert_eq!(floor.start(t0 + EVERY * 2), 450);
        assert_eq!(floor.start(t0 + EVERY * 3), 0);
    }
}
