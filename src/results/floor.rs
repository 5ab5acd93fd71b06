//! Where the relay's next claim starts in the results queue.
//!
//! Publishing a row leaves its entry in the queue's index (`registration_results_pending`) until
//! VACUUM, so a claim from the start of the queue reads every result published since the last
//! VACUUM before it finds a waiting one: on a 1,000,000-card backlog, about 4,000 buffers a claim
//! of 100. While claims come back full, the relay starts the next one at the lowest row it last
//! claimed instead. A row can still appear below that floor: `seq` is taken at insert, so a
//! transaction that commits late brings a lower one, and a row leased by a relay that died, or
//! given back to wait, comes due again. So the whole queue is read again at the first claim that
//! comes back short (the relay has caught up) and at least every [`WHOLE_QUEUE_EVERY`]: such a row
//! waits that long at most. The floor never changes which row of a card goes first: the claim's
//! card's-oldest test reads all of the card's rows (`store::results::claim`).

use std::time::Duration;

use tokio::time::Instant;

/// Longest time between two claims that read the whole queue.
pub const WHOLE_QUEUE_EVERY: Duration = Duration::from_secs(1);

/// The floor of one relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Floor {
    /// The lowest `seq` the last full claim handed out (0: none).
    seq: i64,
    /// When the whole queue was last read with a full claim; `None`: the next claim reads it.
    whole_queue_at: Option<Instant>,
}

impl Floor {
    /// The `seq` the next claim starts from at `now`: 0 (the whole queue) unless a full claim
    /// read the whole queue less than [`WHOLE_QUEUE_EVERY`] ago.
    pub fn start(&self, now: Instant) -> i64 {
        match self.whole_queue_at {
            Some(at) if now.saturating_duration_since(at) < WHOLE_QUEUE_EVERY => self.seq,
            _ => 0,
        }
    }

    /// Records a claim that started at `from` and handed out `claimed` rows, the lowest `lowest`,
    /// when at most `limit` were asked for.
    pub fn claimed(&mut self, from: i64, claimed: usize, lowest: Option<i64>, limit: usize, now: Instant) {
        match lowest {
            Some(lowest) if claimed >= limit => {
                if from == 0 {
                    self.whole_queue_at = Some(now);
                }
                self.seq = lowest;
            }
            _ => *self = Self::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_claims_move_the_floor_up_and_a_short_one_sends_the_next_to_the_whole_queue() {
        let t0 = Instant::now();
        let mut floor = Floor::default();
        assert_eq!(floor.start(t0), 0);
        floor.claimed(0, 10, Some(500), 10, t0);
        assert_eq!(floor.start(t0), 500);
        floor.claimed(500, 10, Some(510), 10, t0 + Duration::from_millis(10));
        assert_eq!(floor.start(t0 + Duration::from_millis(20)), 510);
        floor.claimed(510, 3, Some(520), 10, t0 + Duration::from_millis(30));
        assert_eq!(floor.start(t0 + Duration::from_millis(40)), 0, "a short claim: caught up");
        floor.claimed(0, 10, Some(100), 10, t0 + Duration::from_millis(50));
        assert_eq!(floor.start(t0 + Duration::from_millis(60)), 100, "a late commit below the old floor");
    }

    #[test]
    fn the_whole_queue_is_read_again_after_its_period_however_full_the_claims() {
        let t0 = Instant::now();
        let mut floor = Floor::default();
        floor.claimed(0, 10, Some(500), 10, t0);
        // Claims from the floor do not restart the period: only a claim of the whole queue does.
        floor.claimed(500, 10, Some(600), 10, t0 + WHOLE_QUEUE_EVERY / 2);
        assert_eq!(floor.start(t0 + WHOLE_QUEUE_EVERY / 2), 600);
        assert_eq!(floor.start(t0 + WHOLE_QUEUE_EVERY), 0);
        floor.claimed(0, 10, Some(450), 10, t0 + WHOLE_QUEUE_EVERY);
        assert_eq!(floor.start(t0 + WHOLE_QUEUE_EVERY), 450, "a late commit below the old floor");
    }

    #[test]
    fn an_empty_claim_resets_the_floor() {
        let t0 = Instant::now();
        let mut floor = Floor::default();
        floor.claimed(0, 5, Some(500), 5, t0);
        floor.claimed(500, 0, None, 5, t0);
        assert_eq!(floor, Floor::default());
    }
}
