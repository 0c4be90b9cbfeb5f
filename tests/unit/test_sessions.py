"""SessionFeatures on a bounded input."""

from tests.helpers import event, finals, run_batch
from transforms.sessions import SessionFeatures

MIN = 60_000
NAMES = ("clicks_in_session", "session_duration_s")


def final_pairs(out):
    rows = {}
    for u in finals(out["updates"]):
        rows.setdefault(u.as_of_ms, {})[u.feature] = u.value
    return sorted((k, v["clicks_in_session"], v["session_duration_s"]) for k, v in rows.items())


def test_gap_of_exactly_15_minutes_starts_a_new_session():
    events = [event("u", 0), event("u", 14 * MIN), event("u", 29 * MIN), event("u", 44 * MIN + 1)]
    # 0 -> 14 min (gap 14) merge; 14 -> 29 (gap exactly 15) splits; 29 -> 44:00.001 splits.
    out = run_batch(SessionFeatures(*NAMES), events)
    assert final_pairs(out) == [(14 * MIN, 2, 840), (29 * MIN, 1, 0), (44 * MIN + 1, 1, 0)]


def test_out_of_order_events_never_give_negative_durations():
    events = [event("u", 10 * MIN), event("u", 2 * MIN, "purchase"), event("u", 5 * MIN)]
    out = run_batch(SessionFeatures(*NAMES), events)
    assert final_pairs(out) == [(10 * MIN, 2, 480)]
    assert all(u.value >= 0 for u in out["updates"])


def test_a_bridging_event_merges_two_sessions():
    events = [event("u", 0), event("u", 20 * MIN), event("u", 10 * MIN)]
    out = run_batch(SessionFeatures(*NAMES), events)
    assert final_pairs(out) == [(20 * MIN, 3, 1200)]


def test_only_clicks_count():
    events = [event("u", 0, "view"), event("u", 1_000, "purchase", 3.0), event("u", 2_500)]
    assert final_pairs(run_batch(SessionFeatures(*NAMES), events)) == [(2_500, 1, 2)]
