"""TestStream: on-time, late-within-lateness and too-late behaviour, expiry, TTL."""

from tests.helpers import event, finals, run_stream, stream_of
from transforms.counters import LifetimeCounts
from transforms.late import RouteLateEvents
from transforms.lifetime import LifetimeAggregate
from transforms.sessions import SessionFeatures
from transforms.sliding import SlidingAggregate, SlidingSum
from transforms.tumbling import TumblingAggregate, TumblingSum

MIN = 60_000
NAMES = ("clicks_in_session", "session_duration_s")
MIN5 = 5 * MIN


def buy(ts, value):
    return event("u", ts, "purchase", value)


class TestTumbling:
    def test_on_time_then_late_update_then_too_late_to_side_output(self):
        out = run_stream(TumblingSum("t", "eventValue"), stream_of(
            buy(10_000, 1.0), buy(20_000, 2.0),
            MIN5 + 1,                     # watermark passes the window end: on-time pane
            buy(30_000, 4.0),             # late, within the 60 s lateness: value updated
            MIN5 + MIN + 1,               # window expired
            buy(40_000, 8.0),             # too late: side output, not counted
        ))
        assert [(u.value, u.as_of_ms) for u in finals(out["updates"])] == [
            (3.0, MIN5), (7.0, MIN5)]
        assert [(e.event["eventValue"], e.feature) for e in out["late"]] == [(8.0, "t")]

    def test_early_panes_are_speculative_before_the_watermark(self):
        out = run_stream(TumblingSum("t", "eventValue"), stream_of(buy(1, 1.0), buy(2, 2.0)))
        assert [(u.value, u.final) for u in out["updates"]] == [
            (1.0, False), (3.0, False), (3.0, True)]


    def test_bounded_out_of_orderness_makes_slightly_late_events_on_time(self):
        steps = (buy(10_000, 1.0), MIN5 + 1, buy(299_000, 2.0), MIN5 + 10_001)
        held = run_stream(TumblingSum("t", "eventValue", watermark_delay_ms=10_000),
                          stream_of(*steps))
        assert [u.value for u in finals(held["updates"])] == [3.0]
        plain = run_stream(TumblingSum("t", "eventValue"), stream_of(*steps))
        assert [u.value for u in finals(plain["updates"])] == [1.0, 3.0]  # final, then repair


class TestSessions:
    def test_closes_on_watermark_then_late_merge_repairs_then_too_late(self):
        out = run_stream(SessionFeatures(*NAMES), stream_of(
            event("u", 0), event("u", 5 * MIN),
            20 * MIN + 1,                 # past 5 min + 15 min gap: session final
            event("u", 6 * MIN),          # late (window max 21 min - 1 ms + 60 s >= wm)
            37 * MIN,                     # past 21 min + 60 s lateness
            event("u", 7 * MIN),          # too late: proto-session [7, 22) + 1 min < 37
        ))
        got = [(u.feature, u.value, u.as_of_ms) for u in finals(out["updates"])]
        assert got == [("clicks_in_session", 2, 5 * MIN), ("session_duration_s", 300, 5 * MIN),
                       ("clicks_in_session", 3, 6 * MIN), ("session_duration_s", 360, 6 * MIN)]
        assert [e.event["eventTimestamp"] for e in out["late"]] == [7 * MIN]

    def test_late_event_bridges_two_closed_sessions(self):
        out = run_stream(SessionFeatures(*NAMES, allowed_lateness_ms=30 * MIN), stream_of(
            event("u", 0), event("u", 20 * MIN),
            36 * MIN,                     # both sessions closed
            event("u", 10 * MIN),         # bridges them
        ))
        last = finals(out["updates"])[-2:]
        assert [(u.value, u.as_of_ms) for u in last] == [(3, 20 * MIN), (1200, 20 * MIN)]


class TestSliding:
    def test_expiry_timers_lower_the_value_as_the_watermark_advances(self):
        out = run_stream(SlidingSum("s", "amount"), stream_of(
            event("u", 1_000, amount=10.0), event("u", 30_000, amount=5.0),
            62_000,                       # first event expired at 61 999
            91_000,                       # second at 90 999
        ))
        assert [(u.as_of_ms, u.value) for u in finals(out["updates"])] == [
            (1_999, 10.0), (30_999, 15.0), (61_999, 5.0), (90_999, 0.0)]

    def test_late_event_repairs_published_points_and_too_late_goes_aside(self):
        out = run_stream(SlidingSum("s", "amount", allowed_lateness_ms=10_000), stream_of(
            event("u", 1_000, amount=10.0),
            5_000,                        # 1 999 is final
            event("u", 1_500, amount=1.0),  # late but within 10 s: 1 999 repaired
            70_000,                       # expiry point 61 999 fired: the key knows wm >= 62 000
            event("u", 2_000, amount=7.0),  # 2 000 + 10 s < 62 000: too late
        ))
        repaired = [(u.as_of_ms, u.value) for u in finals(out["updates"]) if u.as_of_ms == 1_999]
        assert repaired == [(1_999, 10.0), (1_999, 11.0)]
        assert [e.event["amount"] for e in out["late"]] == [7.0]
        expiry = [u.value for u in finals(out["updates"]) if u.as_of_ms == 61_999]
        assert expiry == [0.0]


class TestTtl:
    def test_idle_key_state_is_cleared_after_ttl(self):
        ends = [event("u", ts, "END", cityId="ams") for ts in (1_000, 2_000)]
        out = run_stream(LifetimeCounts("n", "c", "cityId", ttl_ms=10 * MIN), stream_of(
            *ends,
            12 * MIN,                     # idle for 10 min: state cleared
            event("u", 13 * MIN, "END", cityId="lis"),
        ), tags=("updates",))
        totals = [(u.value, u.final) for u in out["updates"] if u.feature == "n"]
        assert totals[-1][0] == 1, totals  # counting starts over after the TTL
        assert (2, True) in totals

    def test_without_ttl_state_is_kept(self):
        ends = [event("u", ts, "END", cityId="ams") for ts in (1_000, 2_000)]
        out = run_stream(LifetimeCounts("n", "c", "cityId"), stream_of(
            *ends, 12 * MIN, event("u", 13 * MIN, "END", cityId="lis")), tags=("updates",))
        assert [u.value for u in out["updates"] if u.feature == "n"][-1] == 3


class TestRouter:
    def test_routes_events_behind_the_known_watermark(self):
        out = run_stream(RouteLateEvents("any", allowed_lateness_ms=1_000), stream_of(
            event("u", 5_000), 10_000, event("u", 9_500), event("u", 3_000),
        ), tags=("events", "late"))
        assert sorted(e["eventTimestamp"] for _, e in out["events"]) == [5_000, 9_500]
        assert [e.event["eventTimestamp"] for e in out["late"]] == [3_000]


class TestDeclaredAggregates:
    """The generic parts (any aggregation) as the engine builds them from declarations:
    on time, late within the allowed lateness (repaired, final), too late (late output)."""

    def test_tumbling_max_repairs_then_routes_too_late(self):
        out = run_stream(TumblingAggregate("m", "eventValue", "max"), stream_of(
            buy(10_000, 1.0), buy(20_000, 2.0),
            MIN5 + 1,                     # on-time pane: max 2.0
            buy(30_000, 4.0),             # late within 60 s: repaired to 4.0
            MIN5 + MIN + 1,
            buy(40_000, 8.0),             # too late
        ))
        assert [(u.value, u.as_of_ms) for u in finals(out["updates"])] == [
            (2.0, MIN5), (4.0, MIN5)]
        assert [e.event["eventValue"] for e in out["late"]] == [8.0]

    def test_sliding_count_distinct_repairs_expires_and_routes_too_late(self):
        def ride(ts, city):
            return event("u", ts, cityId=city)

        out = run_stream(SlidingAggregate("d", "cityId", "count_distinct", window_ms=MIN,
                                          tile_ms=10_000, allowed_lateness_ms=10_000,
                                          max_distinct=100, default=0), stream_of(
            ride(1_000, "ams"), ride(2_000, "ams"),
            15_000,                       # point 9 999 final: 1 city
            ride(5_000, "lis"),           # late within 10 s: 9 999 repaired to 2
            80_000,                       # expiry point 69 999 fired: 0
            ride(6_000, "rom"),           # too late
        ))
        got = [(u.as_of_ms, u.value) for u in finals(out["updates"])]
        assert got == [(9_999, 1), (9_999, 2), (69_999, 0)]
        assert [e.event["cityId"] for e in out["late"]] == ["rom"]

    def test_lifetime_last_is_never_too_late(self):
        out = run_stream(LifetimeAggregate("l", "eventValue", "last", default=0.0), stream_of(
            buy(10_000, 1.0), buy(20_000, 2.0),
            MIN5,                         # final at the newest purchase: 2.0
            buy(15_000, 9.0),             # older: repairs nothing, value stays 2.0
            buy(25_000, 3.0),             # newer than the newest, behind the watermark
        ), tags=("updates",))
        assert [(u.value, u.as_of_ms) for u in finals(out["updates"])] == [
            (2.0, 20_000), (2.0, 20_000), (3.0, 25_000)]
