"""TumblingSum on a bounded input (DirectRunner)."""

from tests.helpers import event, finals, run_batch
from transforms.tumbling import TumblingSum

MIN5 = 300_000


def purchases(*pairs):
    return [event("u", ts, "purchase", v) for ts, v in pairs]


def test_one_final_per_window_with_the_window_end_as_of():
    out = run_batch(TumblingSum("t", "eventValue"),
                    purchases((1_000, 1.5), (299_999, 2.0), (300_000, 4.0)))
    assert sorted((u.as_of_ms, u.value) for u in finals(out["updates"])) == [
        (MIN5, 3.5), (2 * MIN5, 4.0)]
    assert out["late"] == []


def test_sum_is_exact_whatever_the_order():
    values = [0.1, 0.2, 0.3, 1e16, -1e16, 0.7]
    forward = run_batch(TumblingSum("t", "eventValue"),
                        purchases(*[(i, v) for i, v in enumerate(values)]))
    backward = run_batch(TumblingSum("t", "eventValue"),
                         purchases(*[(i, v) for i, v in reversed(list(enumerate(values)))]))
    assert [u.value for u in finals(forward["updates"])] == [1.3]
    assert [u.value for u in finals(backward["updates"])] == [1.3]


def test_early_firings_are_speculative_and_can_be_switched_off():
    out = run_batch(TumblingSum("t", "eventValue"), purchases((1, 1.0), (2, 2.0)))
    assert sorted(u.value for u in out["updates"] if not u.final) in ([1.0, 3.0], [2.0, 3.0])
    quiet = run_batch(TumblingSum("t", "eventValue", early_firings=False),
                      purchases((1, 1.0), (2, 2.0)))
    assert [(u.value, u.final) for u in quiet["updates"]] == [(3.0, True)]


def test_negative_timestamps_fall_in_the_right_window():
    out = run_batch(TumblingSum("t", "eventValue"), purchases((-1, 1.0), (0, 2.0)))
    assert sorted((u.as_of_ms, u.value) for u in finals(out["updates"])) == [(0, 1.0), (MIN5, 2.0)]
