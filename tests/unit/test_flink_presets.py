"""The FlinkRunner preset flags a pipeline gets from ``--runner=FlinkRunner`` alone."""

from __future__ import annotations

import pytest

from runtime.flink import with_flink_defaults


def flags(*argv: str) -> dict[str, str]:
    out = {}
    for arg in with_flink_defaults(["--runner=FlinkRunner", *argv]):
        name, _, value = arg.partition("=")
        out[name] = value
    return out


def test_live_streams_get_50_ms_bundles_of_the_default_size():
    got = flags()
    assert got["--max_bundle_time_mills"] == "50"
    assert "--max_bundle_size" not in got
    assert got["--state_backend"] == "rocksdb" and "--streaming" in got


def test_the_catch_up_preset_takes_bundles_of_5_s_or_250k_elements():
    got = flags("--bundle_preset=catch_up")
    assert (got["--max_bundle_time_mills"], got["--max_bundle_size"]) == ("5000", "250000")


def test_a_flag_given_wins_over_the_preset():
    got = flags("--bundle_preset=catch_up", "--max_bundle_time_mills=200")
    assert (got["--max_bundle_time_mills"], got["--max_bundle_size"]) == ("200", "250000")


def test_an_unknown_preset_is_refused_with_the_choices():
    with pytest.raises(SystemExit, match="one of low_latency, catch_up"):
        flags("--bundle_preset=fast")


def test_other_runners_are_left_alone():
    assert with_flink_defaults(["--runner=DirectRunner", "--bundle_preset=catch_up"]) == [
        "--runner=DirectRunner", "--bundle_preset=catch_up"]


def test_jobs_go_to_the_worker_pools_unless_another_environment_is_given():
    got = flags()
    assert got["--environment_type"] == "EXTERNAL"
    assert got["--environment_config"] == "beam-worker-pool:50000"
    loopback = flags("--environment_type=LOOPBACK")
    assert loopback["--environment_type"] == "LOOPBACK"
    assert "--environment_config" not in loopback


def test_the_last_environment_and_preset_given_win_as_in_beams_parser():
    got = flags("--environment_type=EXTERNAL", "--bundle_preset=catch_up",
                "--environment_type=LOOPBACK", "--bundle_preset=low_latency")
    assert "--environment_config" not in got
    assert got["--max_bundle_time_mills"] == "50" and "--max_bundle_size" not in got


@pytest.mark.parametrize(("argv", "want"), [
    ((), "every_element"),
    (("--bundle_preset=low_latency",), "every_element"),
    (("--bundle_preset=catch_up",), "per_bundle"),
    (("--bundle_preset=catch_up", "--speculative_updates=every_element"), "every_element"),
    (("--speculative_updates=per_bundle",), "per_bundle"),
])
def test_the_bundle_preset_implies_how_often_speculative_updates_leave(argv, want):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import FeatureOptions, engine_settings

    options = PipelineOptions(with_flink_defaults(["--runner=FlinkRunner", *argv]))
    assert engine_settings(options.view_as(FeatureOptions)).speculative == want


@pytest.mark.parametrize(("argv", "want"), [
    ((), 0),
    (("--bundle_preset=low_latency",), 0),
    (("--bundle_preset=catch_up",), 10_000),
    (("--bundle_preset=catch_up", "--timer_grid_ms=0"), 0),
    (("--timer_grid_ms=2000",), 2_000),
])
def test_the_bundle_preset_implies_the_timer_grid(argv, want):
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.options import FeatureOptions, engine_settings

    options = PipelineOptions(with_flink_defaults(["--runner=FlinkRunner", *argv]))
    assert engine_settings(options.view_as(FeatureOptions)).timer_grid_ms == want
