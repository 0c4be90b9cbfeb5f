"""LifetimeCounts on a bounded input."""

from tests.helpers import event, finals, run_batch
from transforms.counters import LifetimeCounts


def ends(*pairs):
    return [event("u", ts, "END", cityId=city) for ts, city in pairs]


def test_counts_and_per_city_counts_final_at_the_newest_event():
    out = run_batch(LifetimeCounts("n", "per_city", "cityId"),
                    ends((5, "ams"), (1, "ber"), (9, "ams")), tags=("updates",))
    got = {u.feature: (u.value, u.as_of_ms) for u in finals(out["updates"])}
    assert got == {"n": (3, 9), "per_city": ({"ams": 2, "ber": 1}, 9)}


def test_keys_are_counted_separately():
    events = ends((1, "ams")) + [event("v", 2, "END", cityId="lis")]
    out = run_batch(LifetimeCounts("n", "per_city", "cityId"), events, tags=("updates",))
    assert sorted((u.entity_id, u.value) for u in finals(out["updates"], "n")) == [
        ("u", 1), ("v", 1)]
