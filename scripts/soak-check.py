#!/usr/bin/env python3
"""The soak's independent checker (run by scripts/soak; Python with kafka-python and fastavro).

It never reads the workers' verdicts: the truth comes from what the soak published (its record of
each card's plan, and a Kafka consumer of the input topics), what the D1 simulator holds (its stats
and its cards), and a Kafka consumer of the results topic (issue 16), decoded by fastavro against
schemas/card-registration-result. The workers' database is read only to know when they have drained
(offsets applied, outbox and results outbox empty), never to judge.

Exit status: 0 all good; 1 a loss, a duplicate PUT, an unexpected final state or no drain;
2 the checker itself failed; 3 (with --planted-*) exactly the planted faults were found, nothing else.
"""

import argparse
import collections
import glob
import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import time
import urllib.parse

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form
from kafka import KafkaConsumer, TopicPartition

EXPLICIT = {"CreatedOnly", "DeclinedThenCreated", "ConsumerMismatch"}
# Plans whose events travel on two topics with no order between them: under chaos either branch
# may win, so the card may end registered implicitly or explicitly, with at most one PUT.
RACY = {"TokenizedThenCreated", "CreatedThenTokenized"}
# A consumer mismatch whose tokenization (naming the other consumer) was applied before the
# creation: D1 registered the card at tokenization, the creation is the refused message.
MISMATCH_REVERSED = {"REGISTERED_IMPLICIT_TOKENIZATION", "REJECTED"}
REGISTERED = {"REGISTERED_EXPLICIT", "REGISTERED_IMPLICIT_TOKENIZATION", "REGISTERED_IMPLICIT_ORDER", "CONFIRMED_BY_D1"}
# The outcomes each plan must end with when nothing raced (sets of distinct outcomes).
EXPECTED_OUTCOMES = {
    "CreatedOnly": {"REGISTERED_EXPLICIT"},
    "DeclinedThenCreated": {"REGISTERED_EXPLICIT"},
    "ConsumerMismatch": {"REGISTERED_EXPLICIT", "REJECTED"},
    "TokenizedOnly": {"REGISTERED_IMPLICIT_TOKENIZATION"},
    "OrderedOnly": {"REGISTERED_IMPLICIT_ORDER"},
    # Refused without a trustworthy cardId (the PAN cannot be checked against it): its result has
    # no cardId and is counted with the other unkeyed ones.
    "BadLuhn": set(),
}
# Per batch of `publish --poison 2`: the unkeyed refusals expected, by errorCode.
POISON_PER_BATCH = 2


def args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--brokers", required=True)
    p.add_argument("--sim", required=True, help="simulator base URL")
    p.add_argument("--database-url", required=True, help="only to wait for the drain")
    p.add_argument("--group", required=True)
    p.add_argument("--expected", required=True, help="directory of BATCH.jsonl (and .partial) records")
    p.add_argument("--input-topics", required=True)
    p.add_argument("--results-topic", required=True)
    p.add_argument("--schemas", required=True)
    p.add_argument("--stream-secs", type=int, default=0)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--restarts", default="", help="kind=count,...")
    p.add_argument("--publish-failures", default="0")
    p.add_argument("--drain-timeout", type=int, default=900)
    p.add_argument("--planted-duplicate")
    p.add_argument("--planted-loss")
    p.add_argument("--report")
    return p.parse_args()


# ---------------------------------------------------------------- sources


def psql(url, sql):
    out = subprocess.run(["psql", url, "-XAtqc", sql], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError("psql failed")
    return out.stdout.strip()


class Sim:
    """The simulator's admin API over one keep-alive connection."""

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port = u.hostname, u.port
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)

    def get(self, path):
        for attempt in range(3):
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                body = r.read()
                return r.status, (json.loads(body) if body else None)
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def stats(self):
        status, body = self.get("/_sim/stats")
        if status != 200:
            raise RuntimeError(f"simulator stats: HTTP {status}")
        return body

    def card(self, card_id):
        status, body = self.get("/_sim/cards/" + urllib.parse.quote(card_id, safe=""))
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"simulator card: HTTP {status}")
        return body


def end_offsets(brokers, topics):
    c = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False)
    try:
        parts = [TopicPartition(t, p) for t in topics for p in sorted(c.partitions_for_topic(t) or [])]
        return sum(c.end_offsets(parts).values())
    finally:
        c.close()


def wait_for_drain(a, sim, inputs):
    """Waits until the workers applied every input message and emptied both outboxes, and no late
    commit is pending at the simulator (two polls in a row). Returns (drained, seconds)."""
    started, stable = time.time(), 0
    while time.time() - started < a.drain_timeout:
        try:
            published = end_offsets(a.brokers, inputs)
            applied = int(psql(a.database_url, f"SELECT coalesce(sum(next_offset),0) FROM consumer_offsets WHERE group_id = '{a.group}'"))
            open_rows = int(psql(a.database_url, "SELECT count(*) FROM outbox WHERE status IN ('PENDING','IN_FLIGHT')"))
            unpublished = int(psql(a.database_url, "SELECT count(*) FROM registration_results WHERE published_at IS NULL"))
            late = sim.stats().get("lateCommitsPending", 0)
        except Exception as e:  # a service still coming back counts as "not yet"
            print(f"[check] drain: not yet ({type(e).__name__})", file=sys.stderr)
            stable = 0
            time.sleep(2)
            continue
        done = applied == published and open_rows == 0 and unpublished == 0 and late == 0
        stable = stable + 1 if done else 0
        if stable >= 2:
            return True, time.time() - started
        print(f"[check] drain: applied {applied}/{published}, D1 calls open {open_rows}, results to publish {unpublished}, late commits {late}", file=sys.stderr)
        time.sleep(2)
    return False, time.time() - started


def read_topic(brokers, topic):
    """Every message of the topic, from the beginning to the end offsets taken now."""
    c = KafkaConsumer(bootstrap_servers=brokers, enable_auto_commit=False, isolation_level="read_committed",
                      max_partition_fetch_bytes=4 * 1024 * 1024)
    try:
        parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        begin, end = c.beginning_offsets(parts), c.end_offsets(parts)
        # Positions are tracked from the records themselves (kafka-python's position() can block).
        todo = {tp for tp in parts if end[tp] > begin[tp]}
        c.assign(parts)
        for tp in parts:
            c.seek(tp, begin[tp])
        out, deadline = [], time.time() + 900
        while todo:
            if time.time() > deadline:
                raise RuntimeError(f"could not read {topic} to its end")
            for tp, records in c.poll(timeout_ms=1000, max_records=5000).items():
                out.extend(r for r in records if r.offset < end[tp])
                if records and records[-1].offset >= end[tp] - 1:
                    todo.discard(tp)
        return out
    finally:
        c.close()


class ResultDecoder:
    """Avro single-object encoding (C3 01, CRC-64-AVRO fingerprint, body) of every known version."""

    def __init__(self, schema_dir):
        self.by_fp = {}
        for f in sorted(glob.glob(os.path.join(schema_dir, "card-registration-result", "v*.avsc"))):
            with open(f) as fh:
                schema = fastavro.parse_schema(json.load(fh))
            fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))
            # fastavro spells the fingerprint in the byte order the header carries (little-endian),
            # as the Avro Java reference does (interop/AvroReference.java fingerprint).
            self.by_fp[fp] = schema
        if not self.by_fp:
            raise RuntimeError("no card-registration-result schema found")

    def decode(self, value):
        if len(value) < 10 or value[:2] != b"\xc3\x01":
            raise ValueError("not Avro single-object encoding")
        schema = self.by_fp.get(value[2:10])
        if schema is None:
            raise ValueError("unknown schema fingerprint")
        return fastavro.schemaless_reader(io.BytesIO(value[10:]), schema)


# ---------------------------------------------------------------- the check


def load_expected(directory):
    """The plans per card of complete and of partly published batches, and the number of complete
    batches with their PAN-as-cardId cards (kept out of the record: their cardId is a PAN)."""
    cards, partial_cards, batches, pan_ids = {}, {}, 0, 0
    for path in sorted(glob.glob(os.path.join(directory, "b*"))) + sorted(glob.glob(os.path.join(directory, "phantom*"))):
        target = partial_cards if path.endswith(".partial") else cards
        last = -1
        with open(path) as fh:
            for line in fh:
                if line.strip():
                    e = json.loads(line)
                    target[e["cardId"]] = e["plan"]
                    last = max(last, int(e["cardId"].rpartition("-")[2]))
        if path.endswith(".jsonl") and os.path.basename(path).startswith("b"):
            batches += 1
            # The realistic mix gives cards i % 100 in 95..96 a PAN as cardId.
            pan_ids += sum(1 for i in range(last + 1) if i % 100 in (95, 96))
    return cards, partial_cards, batches, pan_ids


def consumer_of(card_id):
    """The consumer the generator gives card i of a batch: PREFIX-c(i/2), 6 digits."""
    prefix, _, i = card_id.rpartition("-")
    return f"{prefix}-c{int(i) // 2:06d}"


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main():
    a = args()
    inputs = a.input_topics.split(",")
    sim = Sim(a.sim)
    drained, drain_secs = wait_for_drain(a, sim, inputs)

    expected, partial, batches, pan_ids = load_expected(a.expected)
    planted = {c for c in (a.planted_duplicate, a.planted_loss) if c}

    # What the input topics hold: per topic, messages and distinct payloads; per card, the first
    # created message's timestamp (for latency) and which topics carried it.
    published = {}
    first_created_ms = {}
    on_created_topic = set()
    for topic in inputs:
        msgs = read_topic(a.brokers, topic)
        payloads = {hashlib.sha256(m.value).digest() for m in msgs}
        published[topic] = {"messages": len(msgs), "distinct": len(payloads)}
        if topic == inputs[0]:
            for m in msgs:
                key = m.key.decode("utf-8", "replace") if m.key else ""
                on_created_topic.add(key)
                if key not in first_created_ms or m.timestamp < first_created_ms[key]:
                    first_created_ms[key] = m.timestamp

    decoder = ResultDecoder(a.schemas)
    raw_results = read_topic(a.brokers, a.results_topic)
    results, undecodable = {}, 0
    for m in raw_results:
        try:
            r = decoder.decode(m.value)
        except ValueError:
            undecodable += 1
            continue
        results.setdefault(r["resultId"], r)
    outcomes_by_card = collections.defaultdict(list)
    unkeyed = collections.Counter()
    for r in results.values():
        if r["cardId"] is None:
            unkeyed[(r["outcome"], r["errorCode"])] += 1
        else:
            outcomes_by_card[r["cardId"]].append(r)

    stats = sim.stats()
    puts_by_card = stats.get("putsByCard", {})

    lost, mismatches, explicit_latency_ms = [], [], []
    branches = collections.Counter()  # (plan, "explicit"|"implicit") for the plans whose topics race
    put_but_implicit = 0
    plans = collections.Counter(expected.values())

    def held_ok(card_id, plan):
        """The simulator holds the card as our PUT left it: registered by API, our consumer, ACTIVE."""
        c = sim.card(card_id)
        if c is None:
            return None
        want = {"registration": "API", "consumerId": consumer_of(card_id), "cardProductId": "prod-classic", "state": "ACTIVE"}
        wrong = {k: c.get(k) for k, v in want.items() if c.get(k) != v}
        if wrong:
            mismatches.append((card_id, plan, f"held by D1 with {sorted(wrong)} unexpected"))
        return c

    for card_id, plan in sorted(expected.items()):
        rs = outcomes_by_card.get(card_id, [])
        got = {r["outcome"] for r in rs}
        puts = puts_by_card.get(card_id, 0)
        if card_id == a.planted_loss:
            if sim.card(card_id) is None:
                lost.append((card_id, plan, "planted: recorded as published, never sent"))
            continue
        if card_id == a.planted_duplicate:
            continue
        explicit = "REGISTERED_EXPLICIT" in got
        if plan == "ConsumerMismatch" and got == MISMATCH_REVERSED:
            branches[(plan, "tokenization first")] += 1
            if puts:
                mismatches.append((card_id, plan, f"{puts} PUT(s) although the tokenization registered it"))
        elif plan in EXPLICIT or explicit:
            # Whatever the results say, D1 must hold a card that needed a PUT or was reported
            # registered by one.
            if held_ok(card_id, plan) is None:
                why = "needs an explicit registration" if plan in EXPLICIT else "REGISTERED_EXPLICIT published"
                lost.append((card_id, plan, f"{why}; D1 does not hold it"))
            if plan not in EXPLICIT and plan not in RACY:
                mismatches.append((card_id, plan, "registered by a PUT; the plan forbids one"))
            elif plan in RACY:
                branches[(plan, "explicit")] += 1
            if plan in EXPECTED_OUTCOMES and got != EXPECTED_OUTCOMES[plan]:
                mismatches.append((card_id, plan, f"outcomes {sorted(got)}, expected {sorted(EXPECTED_OUTCOMES[plan])}"))
        elif plan in RACY:
            branches[(plan, "implicit")] += 1
            # Registered implicitly. PUTs sent before the tokenization was applied may have been
            # refused (the simulator counts a PUT per card before its injected 503/429) or one may
            # have stored the card: then D1 holds it as our PUT left it (duplicates are D1's count).
            if not got & REGISTERED or got - REGISTERED - {"CANCELLED"}:
                mismatches.append((card_id, plan, f"outcomes {sorted(got)}, expected a registration"))
            if puts:
                put_but_implicit += 1
                held_ok(card_id, plan)
        else:
            if got != EXPECTED_OUTCOMES[plan]:
                mismatches.append((card_id, plan, f"outcomes {sorted(got)}, expected {sorted(EXPECTED_OUTCOMES[plan])}"))
            if puts:
                mismatches.append((card_id, plan, f"{puts} PUT(s); the plan forbids one"))
        if explicit and card_id in first_created_ms:
            at = min(r["occurredAt"] for r in rs if r["outcome"] == "REGISTERED_EXPLICIT")
            ms = at.timestamp() * 1000 if hasattr(at, "timestamp") else at
            explicit_latency_ms.append(ms - first_created_ms[card_id])

    # Refusals without a cardId: exactly one per poison message, PAN-as-cardId and bad-Luhn card.
    if not partial:
        want_unkeyed = {
            ("REJECTED", "UNKNOWN_FRAMING"): POISON_PER_BATCH * batches,
            ("REJECTED", "CARD_ID_DERIVED_FROM_PAN"): pan_ids,
            ("REJECTED", "INVALID_PAN"): plans["BadLuhn"],
        }
        if dict(unkeyed) != {k: v for k, v in want_unkeyed.items() if v}:
            mismatches.append(("(no cardId)", "poison/PAN/BadLuhn", f"unkeyed results {dict(unkeyed)}, expected {want_unkeyed}"))

    # Partly published batches: a card whose created event reached the topic and that needs a PUT
    # must be held; nothing more can be expected of it.
    partial_checked = 0
    for card_id, plan in sorted(partial.items()):
        if plan in EXPLICIT and card_id in on_created_topic:
            partial_checked += 1
            if held_ok(card_id, plan) is None:
                lost.append((card_id, plan, "partial batch; created on the topic; D1 does not hold it"))

    duplicates = stats.get("duplicatePuts", 0)
    planted_dup_found = (
        a.planted_duplicate is not None
        and duplicates == 1
        and stats.get("duplicatePutsOnSeededCards", 0) == 1
        and puts_by_card.get(a.planted_duplicate, 0) == 1
    )
    restarts = dict(kv.split("=", 1) for kv in a.restarts.split(",") if "=" in kv)
    total_published = sum(t["messages"] for t in published.values())
    per_topic = ", ".join(f"{t} {v['messages']}" for t, v in published.items())
    by_outcome = collections.Counter(r["outcome"] for r in results.values())
    faults = stats.get("faultsInjected", {})

    rows = [
        ("stream", f"{a.stream_secs} s, {a.workers} workers; drained {drain_secs:.0f} s after it stopped" if drained else f"NOT DRAINED after {drain_secs:.0f} s"),
        ("events published (input topics)", f"{total_published} ({per_topic}); {total_published / max(a.stream_secs, 1):.0f}/s"),
        ("  of which re-published duplicates", str(total_published - sum(t["distinct"] for t in published.values()))),
        ("  publish batches failed (judged from the topics)", f"{a.publish_failures} ({len(partial)} cards, {partial_checked} needing a PUT checked)"),
        ("cards (by plan)", f"{len(expected)}: " + ", ".join(f"{p} {n}" for p, n in sorted(plans.items()))),
        ("registration PUTs at D1", f"{stats.get('putsTotal')} total; {stats.get('effectiveRegistrations')} cards stored by PUT; {stats.get('cardsStored')} held"),
        ("Get Card (reconciliation)", str(stats.get("getsTotal"))),
        ("D1 faults injected", f"errors {sum(faults.get('errors', {}).values())} {dict(faults.get('errors', {}))}, rate-limited {faults.get('rateLimited', 0)}, late commits {faults.get('lateCommit', 0)}, commit-then-timeout {faults.get('commitThenTimeout', 0)}, delayed {faults.get('latency', 0)}"),
        ("results (card-registration-results)", f"{len(raw_results)} messages, {len(results)} distinct resultIds, {undecodable} undecodable"),
        ("  by outcome", ", ".join(f"{o} {n}" for o, n in sorted(by_outcome.items()))),
        ("  without cardId (poison, PAN as cardId)", ", ".join(f"{o} {c} {n}" for (o, c), n in sorted(unkeyed.items())) or "0"),
        ("cross-topic races, by how they ended", ", ".join(f"{p} {b} {n}" for (p, b), n in sorted(branches.items())) or "-"),
        ("  of which implicit after PUT attempts", str(put_but_implicit)),
        ("restarts", ", ".join(f"{k} {v}" for k, v in restarts.items())),
        ("publish -> registered (explicit)", "p50 {} ms, p99 {} ms, max {} ms ({} cards)".format(
            *(int(percentile(explicit_latency_ms, q)) if explicit_latency_ms else "-" for q in (0.5, 0.99, 1.0)), len(explicit_latency_ms))),
        ("DUPLICATE PUTs (D1's count)", str(duplicates)),
        ("LOST (needed a PUT, D1 does not hold it)", str(len(lost))),
        ("UNEXPECTED FINAL STATE", str(len(mismatches))),
    ]
    width = max(len(k) for k, _ in rows)
    print("== soak check ==")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    for card_id, plan, why in lost[:20]:
        print(f"  lost: {card_id} ({plan}): {why}")
    for card_id, plan, why in mismatches[:20]:
        print(f"  state: {card_id} ({plan}): {why}")

    if a.report:
        # What each source says about the first flagged cards: the evidence outlives the run.
        flagged = [c for c, _, _ in lost + mismatches if c in expected][:200]
        evidence = {c: {"plan": expected[c], "putsCounted": puts_by_card.get(c, 0), "d1": sim.card(c),
                        "results": [{k: str(v) for k, v in r.items()} for r in outcomes_by_card.get(c, [])]}
                    for c in flagged}
        with open(a.report, "w") as fh:
            json.dump({"rows": dict(rows), "lost": lost, "mismatches": mismatches, "evidence": evidence, "duplicates": duplicates,
                       "drained": drained, "simStats": {k: v for k, v in stats.items() if k != "putsByCard"}}, fh, indent=2)

    if planted:
        exact = (planted_dup_found or a.planted_duplicate is None) and \
            [c for c, _, _ in lost] == ([a.planted_loss] if a.planted_loss else []) and not mismatches and drained
        print(f"  planted faults: duplicate {'found' if planted_dup_found else 'NOT found'}, loss {'found' if a.planted_loss in [c for c, _, _ in lost] else 'NOT found'}; nothing else: {exact}")
        return 3 if exact else 1
    return 0 if drained and duplicates == 0 and not lost and not mismatches else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as e:  # the checker failing is not a verdict on the service
        print(f"[check] the checker failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(2)
