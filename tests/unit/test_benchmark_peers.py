"""Pure logic of the benchmarks' peers: the hot-user stream and the SQL changelog."""

from __future__ import annotations

from collections import Counter

from benchmarks.flink_sql_peer import newest
from pipelines.generate import StreamSpec, generate

# Zipf 1.1 over 1,000 users: the top user's share is 1 / sum(1 / r^1.1), about 0.179.
TOP_SHARE = 1 / sum(1 / r ** 1.1 for r in range(1, 1_001))


def test_hot_share_gives_one_user_that_share_of_events() -> None:
    spec = StreamSpec(events=20_000, users=1_000, skew=1.1, hot_share=0.5, seed=3)
    users = Counter(e["userId"] for e in generate("user", spec))
    # Half from the hot draw, plus u0000's Zipf share of the other half.
    assert abs(users["u0000"] / 20_000 - (0.5 + 0.5 * TOP_SHARE)) < 0.02
    assert len(users) > 500


def test_without_hot_share_the_top_user_has_its_zipf_share() -> None:
    spec = StreamSpec(events=20_000, users=1_000, skew=1.1, seed=3)
    users = Counter(e["userId"] for e in generate("user", spec))
    assert abs(users["u0000"] / 20_000 - TOP_SHARE) < 0.02


def test_newest_applies_the_changelog_and_keeps_the_newest_as_of() -> None:
    changes = [
        ("u1", "txn_total_5m", 300_000, 5.0, True),
        ("u1", "txn_total_5m", 600_000, 7.0, True),
        ("u1", "last_purchase_value", 10, 1.0, True),
        ("u1", "last_purchase_value", 10, 1.0, False),  # retracted by the Top-1
        ("u1", "last_purchase_value", 20, 2.5, True),
        ("u2", "clicks_in_session", 50, 3.0, True),
        ("u2", "clicks_in_session", 90, 4.0, True),
        ("u2", "clicks_in_session", 90, 4.0, False),  # a newer row retracted
    ]
    assert newest(changes) == {
        "u1": {"last_purchase_value": 2.5, "txn_total_5m": 7.0},
        "u2": {"clicks_in_session": 3.0},
    }
