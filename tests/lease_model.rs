//! A model check of the dispatch protocol: claim, lease, fence, deadline, PUT, reconcile, against
//! a D1 that may commit late, workers that pause (between any two steps) and crash, and leases
//! that expire. Explicit-state search over every interleaving (breadth first, so a counterexample
//! is a shortest one); time is discrete ticks, every timer is a bounded countdown, so the state
//! space is finite and no time horizon is needed.
//!
//! Properties:
//! - safety: a PUT never reaches D1 while the card is stored or an earlier PUT may still commit
//!   (what the simulator counts as a duplicate);
//! - liveness under fair scheduling: from every reachable state, a state where the row is DONE
//!   (the card stored) is reachable (so any scheduler that does not starve an enabled move forever
//!   reaches it).
//!
//! The old rule (reclaim as soon as the lease expires; one check "lease outlives 2 x timeout",
//! then a send at any later time) fails safety; the fixed rule (reclaim only `reconcile delay`
//! after the lease end; every request must be able to end `margin` before the lease end; a worker
//! pauses at most `margin` between that check and the send) passes both. README, "Timing
//! assumptions", shows the counterexample.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

/// The protocol variant under check, with its constants in ticks.
#[derive(Clone, Copy, Debug)]
struct Rule {
    name: &'static str,
    /// Lease length.
    lease: i8,
    /// Request timeout.
    timeout: i8,
    /// Reconcile delay: least wait before asking D1 about a PUT that may have reached it.
    reconcile: i8,
    /// D1 commits or abandons a PUT less than this long after it arrives (the D1 assumption).
    d1_commit_within: i8,
    /// Old rule: an expired lease is reclaimed at once. Fixed: only `reconcile` after its end.
    reclaim_after_delay: bool,
    /// Old rule: send while `lease left >= 2 x timeout`. Fixed: while `left >= timeout + margin`.
    margin: Option<i8>,
    /// Longest pause of a worker between its deadline check and the send (`None`: unbounded).
    max_pause: Option<i8>,
}

const OLD: Rule = Rule {
    name: "old rule",
    lease: 4,
    timeout: 1,
    reconcile: 3,
    d1_commit_within: 3,
    reclaim_after_delay: false,
    margin: None,
    max_pause: None,
};

const FIXED: Rule = Rule {
    name: "fixed rule",
    lease: 4,
    timeout: 1,
    reconcile: 3,
    d1_commit_within: 3,
    reclaim_after_delay: true,
    margin: Some(1),
    max_pause: Some(1),
};

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Row {
    /// Waiting; due when `wait` reaches 0.
    Pending {
        wait: i8,
        reconcile: bool,
    },
    /// Leased; `left` counts down past 0 (expired) to `-(reconcile + 1)`.
    InFlight {
        left: i8,
        reconcile: bool,
    },
    Done,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Phase {
    Idle,
    /// Claimed; must ask D1 first when `reconcile`.
    Claimed {
        reconcile: bool,
    },
    /// The deadline check passed `since` ticks ago; the send comes next.
    Checked {
        since: i8,
    },
    /// A PUT is at D1 (request `req`) or its answer is on the way.
    Waiting {
        req: u8,
    },
    /// Knows the outcome; settles next.
    Concluded {
        outcome: Outcome,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Outcome {
    Registered,
    Ambiguous,
    Release,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Worker {
    phase: Phase,
    /// Its fence is the row's current one.
    holds: bool,
    /// Its view of the lease left (its own monotonic clock, started before the claim).
    left: i8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Req {
    /// At D1 for `age` ticks, not yet committed or abandoned.
    Pending {
        age: i8,
    },
    Committed,
    Abandoned,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    row: Row,
    workers: [Worker; 2],
    /// Every PUT that reached D1, by arrival order.
    reqs: Vec<Req>,
    stored: bool,
    duplicate: bool,
}

impl State {
    fn initial() -> Self {
        let idle = Worker { phase: Phase::Idle, holds: false, left: 0 };
        Self {
            row: Row::Pending { wait: 0, reconcile: false },
            workers: [idle.clone(), idle],
            reqs: vec![],
            stored: false,
            duplicate: false,
        }
    }
}

fn successors(rule: &Rule, s: &State) -> Vec<(String, State)> {
    let mut out = Vec::new();
    // D1: a pending PUT commits (unless the card is there already) or is abandoned, at any time.
    for (i, r) in s.reqs.iter().enumerate() {
        if let Req::Pending { .. } = r {
            let mut n = s.clone();
            n.reqs[i] = Req::Committed;
            n.stored = true;
            out.push(("D1 commits a PUT".to_owned(), n));
            let mut n = s.clone();
            n.reqs[i] = Req::Abandoned;
            out.push(("D1 abandons a PUT".to_owned(), n));
        }
    }
    for w in 0..2 {
        let me = &s.workers[w];
        // Crash: everything in memory is lost; a PUT already at D1 stays there.
        if me.phase != Phase::Idle {
            let mut n = s.clone();
            n.workers[w] = Worker { phase: Phase::Idle, holds: false, left: 0 };
            out.push((format!("W{w} crashes"), n));
        }
        match &me.phase {
            Phase::Idle => {
                let claimable = match &s.row {
                    Row::Pending { wait, reconcile } => (*wait == 0).then_some(*reconcile),
                    Row::InFlight { left, .. } => {
                        let gone = if rule.reclaim_after_delay { -rule.reconcile } else { -1 };
                        (*left <= gone).then_some(true)
                    }
                    Row::Done => None,
                };
                if let Some(reconcile) = claimable {
                    let mut n = s.clone();
                    n.row = Row::InFlight { left: rule.lease, reconcile };
                    for o in &mut n.workers {
                        o.holds = false;
                    }
                    n.workers[w] =
                        Worker { phase: Phase::Claimed { reconcile }, holds: true, left: rule.lease };
                    out.push((format!("W{w} claims the row (reconcile: {reconcile})"), n));
                }
            }
            Phase::Claimed { reconcile } => {
                if *reconcile {
                    // Get Card: a request too, under the same deadline in the fixed rule.
                    let mut n = s.clone();
                    let may_ask = rule.margin.is_none_or(|m| me.left >= rule.timeout + m);
                    n.workers[w].phase = if !may_ask {
                        Phase::Concluded { outcome: Outcome::Release }
                    } else if s.stored {
                        Phase::Concluded { outcome: Outcome::Registered }
                    } else {
                        Phase::Claimed { reconcile: false }
                    };
                    out.push((format!("W{w} asks D1 (stored: {})", s.stored), n));
                } else {
                    let ok = match rule.margin {
                        Some(m) => me.left >= rule.timeout + m,
                        None => me.left >= 2 * rule.timeout,
                    };
                    let mut n = s.clone();
                    n.workers[w].phase = if ok {
                        Phase::Checked { since: 0 }
                    } else {
                        Phase::Concluded { outcome: Outcome::Release }
                    };
                    out.push((
                        format!(
                            "W{w} checks its lease ({} left): {}",
                            me.left,
                            if ok { "send" } else { "release" }
                        ),
                        n,
                    ));
                }
            }
            Phase::Checked { .. } => {
                let mut n = s.clone();
                let busy = s.stored || s.reqs.iter().any(|r| matches!(r, Req::Pending { .. }));
                if busy {
                    n.duplicate = true;
                }
                n.reqs.push(Req::Pending { age: 0 });
                n.workers[w].phase = Phase::Waiting { req: (n.reqs.len() - 1) as u8 };
                let note =
                    if busy { " (DUPLICATE: D1 has the card or may still commit another PUT)" } else { "" };
                out.push((format!("W{w} sends a PUT{note}"), n));
            }
            Phase::Waiting { req } => {
                let r = &s.reqs[*req as usize];
                if *r == Req::Committed {
                    let mut n = s.clone();
                    n.workers[w].phase = Phase::Concluded { outcome: Outcome::Registered };
                    out.push((format!("W{w} gets 2xx"), n));
                }
                // A timeout, a 5xx or a lost connection, whether or not D1 acted.
                let mut n = s.clone();
                n.workers[w].phase = Phase::Concluded { outcome: Outcome::Ambiguous };
                out.push((format!("W{w} times out"), n));
            }
            Phase::Concluded { outcome } => {
                let mut n = s.clone();
                n.workers[w] = Worker { phase: Phase::Idle, holds: false, left: 0 };
                if me.holds && matches!(s.row, Row::InFlight { .. }) {
                    let reconcile = matches!(s.row, Row::InFlight { reconcile: true, .. });
                    n.row = match outcome {
                        Outcome::Registered => Row::Done,
                        Outcome::Ambiguous => Row::Pending { wait: rule.reconcile, reconcile: true },
                        Outcome::Release => Row::Pending { wait: 0, reconcile },
                    };
                    for o in &mut n.workers {
                        o.holds = false;
                    }
                }
                out.push((format!("W{w} settles ({outcome:?}, fence held: {})", me.holds), n));
            }
        }
    }
    // Time passes (any worker may be paused meanwhile), unless something must happen first.
    let d1_due =
        s.reqs.iter().any(|r| matches!(r, Req::Pending { age } if *age + 1 >= rule.d1_commit_within));
    let send_due = rule
        .max_pause
        .is_some_and(|m| s.workers.iter().any(|w| matches!(w.phase, Phase::Checked { since } if since >= m)));
    if !d1_due && !send_due {
        let mut n = s.clone();
        let floor = -(rule.reconcile + 1);
        n.row = match &s.row {
            Row::Pending { wait, reconcile } => {
                Row::Pending { wait: (wait - 1).max(0), reconcile: *reconcile }
            }
            Row::InFlight { left, reconcile } => {
                Row::InFlight { left: (left - 1).max(floor), reconcile: *reconcile }
            }
            Row::Done => Row::Done,
        };
        for w in &mut n.workers {
            if w.phase != Phase::Idle {
                w.left = (w.left - 1).max(floor);
            }
            if let (Phase::Checked { since }, Some(m)) = (&mut w.phase, rule.max_pause) {
                *since = (*since + 1).min(m);
            }
        }
        for r in &mut n.reqs {
            if let Req::Pending { age } = r {
                *age += 1;
            }
        }
        out.push(("one tick passes".to_owned(), n));
    }
    out.into_iter().map(|(label, n)| (label, normalize(n))).collect()
}

/// Forgets settled PUTs nobody waits for (their effect is in `stored`), so the space stays finite.
fn normalize(mut s: State) -> State {
    let mut keep = Vec::new();
    let mut index = vec![None; s.reqs.len()];
    for (i, r) in s.reqs.iter().enumerate() {
        let awaited = s.workers.iter().any(|w| w.phase == Phase::Waiting { req: i as u8 });
        if matches!(r, Req::Pending { .. }) || awaited {
            index[i] = Some(keep.len() as u8);
            keep.push(r.clone());
        }
    }
    for w in &mut s.workers {
        if let Phase::Waiting { req } = &mut w.phase {
            *req = index[*req as usize].unwrap_or(0);
        }
    }
    s.reqs = keep;
    s
}

struct Report {
    states: usize,
    counterexample: Option<Vec<String>>,
    stuck: usize,
}

fn check(rule: &Rule) -> Report {
    let init = State::initial();
    let mut parent: HashMap<State, Option<(State, String)>> = HashMap::new();
    let mut edges: Vec<(State, State)> = Vec::new();
    let mut queue = VecDeque::from([init.clone()]);
    parent.insert(init, None);
    while let Some(s) = queue.pop_front() {
        if s.duplicate {
            let mut trace = Vec::new();
            let mut at = s.clone();
            while let Some(Some((prev, label))) = parent.get(&at) {
                trace.push(label.clone());
                at = prev.clone();
            }
            trace.reverse();
            return Report { states: parent.len(), counterexample: Some(trace), stuck: 0 };
        }
        for (label, n) in successors(rule, &s) {
            edges.push((n.clone(), s.clone()));
            if !parent.contains_key(&n) {
                parent.insert(n.clone(), Some((s.clone(), label)));
                queue.push_back(n);
            }
        }
    }
    // Liveness: every state must reach a DONE state (backwards search from the DONE states).
    let mut preds: HashMap<&State, Vec<&State>> = HashMap::new();
    for (to, from) in &edges {
        preds.entry(to).or_default().push(from);
    }
    let mut good: std::collections::HashSet<&State> = parent.keys().filter(|s| s.row == Row::Done).collect();
    let mut frontier: Vec<&State> = good.iter().copied().collect();
    while let Some(s) = frontier.pop() {
        for p in preds.get(s).into_iter().flatten() {
            if good.insert(p) {
                frontier.push(p);
            }
        }
    }
    let stuck = parent.keys().filter(|s| !good.contains(s)).count();
    Report { states: parent.len(), counterexample: None, stuck }
}

fn describe(rule: &Rule, report: &Report) -> String {
    let mut out = format!("{}: {} states explored", rule.name, report.states);
    match &report.counterexample {
        Some(trace) => {
            let _ = writeln!(out, "; duplicate PUT reachable in {} steps:", trace.len());
            for (i, step) in trace.iter().enumerate() {
                let _ = writeln!(out, "  {:>2}. {step}", i + 1);
            }
        }
        None => {
            let _ = write!(out, "; no duplicate PUT; states that cannot reach DONE: {}", report.stuck);
        }
    }
    out
}

#[test]
fn the_old_rule_lets_a_second_worker_send_while_the_first_put_may_still_commit() {
    let report = check(&OLD);
    eprintln!("{}", describe(&OLD, &report));
    let trace = report.counterexample.expect("the model finds the duplicate the issue describes");
    assert_eq!(trace.iter().filter(|s| s.contains("sends a PUT")).count(), 2);
}

#[test]
fn the_fixed_rule_never_sends_twice_and_always_can_finish() {
    let report = check(&FIXED);
    eprintln!("{}", describe(&FIXED, &report));
    assert_eq!(report.counterexample, None, "{}", describe(&FIXED, &report));
    assert_eq!(report.stuck, 0, "some reachable state can never reach DONE");
    assert!(report.states > 1000, "the model explores a meaningful space");
    // And across settings that satisfy the start-up rules (lease >= margin + 3 x timeout,
    // reconcile delay >= timeout, D1 within the delay, pauses within the margin).
    for lease in 4..=5 {
        for reconcile in 1..=3 {
            for margin in 1..=2 {
                if lease < margin + 3 {
                    continue;
                }
                let rule = Rule {
                    lease,
                    reconcile,
                    d1_commit_within: reconcile,
                    margin: Some(margin),
                    max_pause: Some(margin),
                    ..FIXED
                };
                let report = check(&rule);
                assert_eq!(
                    report.counterexample, None,
                    "lease {lease}, reconcile {reconcile}, margin {margin}"
                );
                assert_eq!(report.stuck, 0, "lease {lease}, reconcile {reconcile}, margin {margin}");
            }
        }
    }
}

#[test]
fn the_fixed_rule_needs_d1_to_commit_within_the_reconcile_delay() {
    // The assumption is needed: a D1 slower than the reconcile delay breaks exactly-once.
    let slow =
        Rule { name: "fixed rule, D1 slower than the delay", d1_commit_within: FIXED.reconcile + 2, ..FIXED };
    let report = check(&slow);
    eprintln!("{}", describe(&slow, &report));
    assert!(report.counterexample.is_some());
}

#[test]
fn the_fixed_rule_needs_pauses_between_check_and_send_bounded_by_the_margin() {
    // A worker frozen between its check and the send for longer than the margin allows.
    let unbounded = Rule { name: "fixed rule, unbounded pause", max_pause: None, ..FIXED };
    let report = check(&unbounded);
    eprintln!("{}", describe(&unbounded, &report));
    assert!(report.counterexample.is_some());
}
