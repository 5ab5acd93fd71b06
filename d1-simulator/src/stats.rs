//! Counters of what clients did to the simulator: PUTs (in total and per cardId), effective
//! registrations, duplicate PUTs (the exactly-once metric), GETs, rejections by errorCode, tokens
//! and injected faults. Counting only: keys are cardIds already checked not to reveal a PAN.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// A snapshot of the counters (`GET /_sim/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Every Register Card PUT received, whatever its fate.
    pub puts_total: u64,
    /// PUTs per cardId, for cardIds known not to reveal a PAN: a card already stored, or a request
    /// whose card data was decrypted and checked. Requests refused earlier count only in
    /// `puts_total` and `rejected_by_reason`. Empty in `GET /_sim/counts`.
    #[serde(default)]
    pub puts_by_card: BTreeMap<String, u64>,
    /// Cards stored by a PUT.
    pub effective_registrations: u64,
    /// Late commits accepted but not yet landed: a checker waits for 0 before counting cards.
    #[serde(default)]
    pub late_commits_pending: u64,
    /// PUTs that arrived for a cardId already stored (by a PUT or by seeding), whatever the answer.
    pub duplicate_puts: u64,
    /// The part of `duplicate_puts` whose card had been seeded (implicitly registered).
    pub duplicate_puts_on_seeded_cards: u64,
    /// Every Get Card GET received.
    pub gets_total: u64,
    /// Refusals by errorCode (4xx answers and configured duplicate errors; not injected faults).
    pub rejected_by_reason: BTreeMap<String, u64>,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Faults injected, by kind.
    pub faults_injected: FaultCounts,
    /// Cards seeded (implicit registrations).
    pub seeded_cards: u64,
    /// Cards currently stored, however they came.
    pub cards_stored: u64,
    /// Calls made to the issuer's outbound APIs (when configured).
    #[serde(default)]
    pub issuer_calls: crate::callbacks::IssuerCallStats,
}

impl Stats {
    /// PUTs counted for one cardId.
    pub fn puts_for(&self, card_id: &str) -> u64 {
        self.puts_by_card.get(card_id).copied().unwrap_or(0)
    }

    /// The largest PUT count of any single cardId (1 when every card got exactly one PUT).
    pub fn max_puts_per_card(&self) -> u64 {
        self.puts_by_card.values().copied().max().unwrap_or(0)
    }

    /// Refusals counted for one errorCode.
    pub fn rejected(&self, error_code: &str) -> u64 {
        self.rejected_by_reason.get(error_code).copied().unwrap_or(0)
    }
}

/// Injected faults by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FaultCounts {
    /// Requests delayed by the latency fault.
    pub latency: u64,
    /// Error-rate answers, by status.
    pub errors: BTreeMap<u16, u64>,
    /// 429s from the token-bucket rate limit.
    pub rate_limited: u64,
    /// Registrations answered 500 without storing.
    pub fail_before_commit: u64,
    /// Registrations stored, then answered after the long delay.
    pub commit_then_timeout: u64,
    /// Registrations committed late (whether or not the client still listened).
    pub late_commit: u64,
    /// Token requests delayed by `tokenLatency`.
    pub token_latency: u64,
    /// Registrations answered 401 by the "401 once" fault.
    pub unauthorized_once: u64,
}

/// The live counters behind [`Stats`]; hash maps so that counting stays cheap with many cards.
#[derive(Default)]
pub(crate) struct Recorder {
    puts_total: u64,
    puts_by_card: HashMap<String, u64>,
    effective_registrations: u64,
    late_commits_pending: u64,
    duplicate_puts: u64,
    duplicate_puts_on_seeded_cards: u64,
    gets_total: u64,
    rejected_by_reason: HashMap<String, u64>,
    tokens_issued: u64,
    faults: FaultCounts,
    seeded_cards: u64,
}

impl Recorder {
    pub(crate) fn put_received(&mut self) {
        self.puts_total += 1;
    }

    pub(crate) fn put_for_card(&mut self, card_id: &str) {
        match self.puts_by_card.get_mut(card_id) {
            Some(count) => *count += 1,
            None => {
                self.puts_by_card.insert(card_id.to_owned(), 1);
            }
        }
    }

    pub(crate) fn duplicate_put(&mut self, on_seeded_card: bool) {
        self.duplicate_puts += 1;
        if on_seeded_card {
            self.duplicate_puts_on_seeded_cards += 1;
        }
    }

    pub(crate) fn registered(&mut self) {
        self.effective_registrations += 1;
    }

    pub(crate) fn late_commit_scheduled(&mut self) {
        self.faults.late_commit += 1;
        self.late_commits_pending += 1;
    }

    pub(crate) fn late_commit_landed(&mut self) {
        self.late_commits_pending = self.late_commits_pending.saturating_sub(1);
    }

    pub(crate) fn get_received(&mut self) {
        self.gets_total += 1;
    }

    pub(crate) fn rejected(&mut self, error_code: &str) {
        *self.rejected_by_reason.entry(error_code.to_owned()).or_default() += 1;
    }

    pub(crate) fn token_issued(&mut self) {
        self.tokens_issued += 1;
    }

    pub(crate) fn seeded(&mut self) {
        self.seeded_cards += 1;
    }

    pub(crate) fn faults(&mut self) -> &mut FaultCounts {
        &mut self.faults
    }

    /// The counters; `per_card` adds `puts_by_card`, whose copy grows with every card seen.
    pub(crate) fn snapshot(&self, cards_stored: u64, per_card: bool) -> Stats {
        Stats {
            puts_total: self.puts_total,
            puts_by_card: if per_card {
                self.puts_by_card.iter().map(|(k, v)| (k.clone(), *v)).collect()
            } else {
                BTreeMap::new()
            },
            effective_registrations: self.effective_registrations,
            late_commits_pending: self.late_commits_pending,
            duplicate_puts: self.duplicate_puts,
            duplicate_puts_on_seeded_cards: self.duplicate_puts_on_seeded_cards,
            gets_total: self.gets_total,
            rejected_by_reason: self.rejected_by_reason.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            tokens_issued: self.tokens_issued,
            faults_injected: self.faults.clone(),
            seeded_cards: self.seeded_cards,
            cards_stored,
            issuer_calls: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_reports_counts_per_card_and_the_worst_card() {
        let mut recorder = Recorder::default();
        for card in ["a", "b", "a"] {
            recorder.put_received();
            recorder.put_for_card(card);
        }
        recorder.duplicate_put(false);
        recorder.rejected("INVALID_PAN");
        let stats = recorder.snapshot(2, true);
        assert_eq!(stats.puts_total, 3);
        assert_eq!(stats.puts_for("a"), 2);
        assert_eq!(stats.puts_for("zzz"), 0);
        assert_eq!(stats.max_puts_per_card(), 2);
        assert_eq!(stats.duplicate_puts, 1);
        assert_eq!(stats.rejected("INVALID_PAN"), 1);
        assert_eq!(stats.cards_stored, 2);
    }
}
