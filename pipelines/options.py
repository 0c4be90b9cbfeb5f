"""Command-line options shared by the feature pipelines (Beam-style flags)."""

from __future__ import annotations

from typing import Any

from apache_beam.options.pipeline_options import KafkaStreamsRunnerOptions, PipelineOptions

from transforms.engine import ENGINES, EngineSettings
from transforms.fused import SPECULATIVE


class FeatureOptions(PipelineOptions):
    """Inputs, outputs and feature settings of a feature pipeline."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:  # noqa: ANN001 (Beam's signature)
        src = parser.add_argument_group("input")
        src.add_argument("--input", default=None,
                          help="bounded replay: JSON lines, or Avro if it ends in .avro "
                              "(any Beam filesystem path, e.g. gs://)")
        # --bootstrap_servers is Beam's own flag (KafkaStreamsRunnerOptions,
        # default localhost:9092); see bootstrap_servers() below.
        src.add_argument("--topic", default=None,
                          help="Kafka topic of events; with --bootstrap_servers reads Kafka")
        src.add_argument("--records_keyed_by_entity", action="store_true",
                          help="the topic's records are keyed by the entity id (as "
                              "pipelines.produce keys them): the keyed stage decodes them, "
                              "one Python step per event instead of two; a record without "
                              "that key is a dead letter")
        src.add_argument("--expansion_service", default="localhost:8097",
                          help="host:port of the Java expansion service for KafkaIO")
        src.add_argument("--consumer_group", default=None,
                          help="Kafka consumer group (default rtfeatures-<record name>)")
        src.add_argument("--kafka_config", default=None,
                          help="extra Kafka client settings, JSON or @file (SASL/SSL); "
                              "never logged")
        src.add_argument("--run_timeout_s", type=float, default=1800,
                          help="with --max_records: give up (and cancel) after this long")
        src.add_argument("--stop_at_watermark_ms", type=int, default=None,
                          help="with --max_records: also wait until the job's watermark "
                              "reaches this event time (default: the wall clock - 60 s)")
        src.add_argument("--max_records", type=int, default=None,
                          help="stop after this many Kafka records (a bounded run)")
        src.add_argument("--schema_registry_url", default=None,
                          help="Confluent-compatible schema registry (Apicurio: "
                              ".../apis/ccompat/v7); default: schemas/catalogue.json")
        src.add_argument("--schema_registry_config", default=None,
                          help="extra registry client settings, JSON or @file (e.g. "
                              "basic.auth.user.info); never logged")
        src.add_argument("--reader_schema", default=None,
                          help="reader schema file in schemas/ (default per pipeline)")

        out = parser.add_argument_group("outputs")
        out.add_argument("--redis_url", default=None,
                          help="redis://[:password@]host:port/db (rediss:// for TLS)")
        out.add_argument("--redis_prefix", default="features", help="hash key prefix")
        out.add_argument("--redis_layout", default="hash", choices=("hash", "seed", "both"))
        out.add_argument("--redis_key_ttl_s", type=float, default=None,
                          help="expire an entity's hash after this long without writes")
        out.add_argument("--redis_batch_size", type=int, default=100)
        out.add_argument("--redis_flush_ms", type=int, default=1000)
        out.add_argument("--feature_log", default=None,
                          help="file of every feature update, one JSON line each")
        out.add_argument("--dead_letter", default=None,
                          help="file of bad inputs, one JSON line each (payload + reason)")
        out.add_argument("--late_output", default=None,
                          help="file of events too late for a feature, one JSON line each")
        out.add_argument("--dead_letter_topic", default=None,
                          help="Kafka topic for dead letters (JSON values)")
        out.add_argument("--late_topic", default=None,
                          help="Kafka topic for too-late events (JSON values)")

        add_feature_arguments(parser.add_argument_group("features"))


def add_feature_arguments(group: Any, engine: bool = True) -> None:
    """The flags that change what features compute: an online run and a training
    set over the same events agree only when they are given the same ones."""
    group.add_argument("--allowed_lateness_ms", type=int, default=None,
                       help="override every feature's declared allowed lateness")
    group.add_argument("--max_out_of_orderness_ms", type=int, default=10_000,
                       help="bounded out-of-orderness: features treat the watermark "
                            "as this much earlier (Kafka's CreateTime watermark has none)")
    group.add_argument("--state_ttl_s", type=float, default=None,
                       help="clear lifetime state of keys idle this long (event time); "
                            "overrides the declared TTL")
    group.add_argument("--tile_ms", type=int, default=None,
                       help="tile size of every sliding feature (divides each window; "
                            "default: the declared tiles)")
    group.add_argument("--no_early_firings", action="store_true",
                       help="no speculative window values before the watermark")
    if engine:
        group.add_argument("--engine", default="fused", choices=ENGINES,
                           help="fused: one keyed stage for all of an entity's features (one "
                                "state cell and one timer family per key); stages: a keyed "
                                "stage per feature group (restores savepoints taken by it)")
        group.add_argument("--speculative_updates", default=None, choices=SPECULATIVE,
                           help="every_element: each speculative value is emitted; per_bundle: "
                                "per entity and feature, the one the store keeps of a bundle's, "
                                "at its end (the store gets the same values either way: it is "
                                "written once per entity and bundle; the feature log and the "
                                "speculative counters see fewer). Default: per_bundle with the "
                                "catch_up bundle preset, every_element otherwise")
        group.add_argument("--timer_grid_ms", type=int, default=None,
                           help="the fused stage sets its runner timers on this grid of event "
                                "time: one timer per key and grid step fires every time its "
                                "features wait for in the step, in order (values are the same; "
                                "finals and expiries are visible up to this much later). 0: a "
                                "runner timer per time. Default: 10000 with the catch_up bundle "
                                "preset, 0 otherwise")


def engine_settings(options: PipelineOptions, step_names: dict[str, str] | None = None
                    ) -> EngineSettings:
    """The command line's overrides of the declarations, for ``transforms.engine``
    (options given ``add_feature_arguments``; without ``--engine``: fused)."""
    return EngineSettings(
        engine=getattr(options, "engine", "fused"),
        watermark_delay_ms=options.max_out_of_orderness_ms,
        allowed_lateness_ms=options.allowed_lateness_ms, tile_ms=options.tile_ms,
        state_ttl_s=options.state_ttl_s, early_firings=not options.no_early_firings,
        speculative=speculative_updates(options),
        timer_grid_ms=timer_grid_ms(options),
        step_names=dict(step_names or {}))


# What each bundle preset (``runtime.flink.BUNDLE_PRESETS``) implies for the fused
# stage. In a backlog's bundle an entity has hundreds of events whose speculative
# values nobody can read before the bundle's end, and the watermark moves seconds
# of event time at a step: a key's times within one grid step may fire together,
# at no cost to any value, only to how soon finals show.
PRESET_ENGINE_SETTINGS: dict[str, dict[str, Any]] = {
    "low_latency": {"speculative": "every_element", "timer_grid_ms": 0},
    "catch_up": {"speculative": "per_bundle", "timer_grid_ms": 10_000},
}


def _implied(options: PipelineOptions | Any, flag: str, setting: str, default: Any) -> Any:
    """The flag if given, else what the job's ``--bundle_preset`` implies for the
    setting; ``default`` for options that have neither (a training set)."""
    given = getattr(options, flag, None)
    if given is not None:
        return given
    if isinstance(options, PipelineOptions):
        from runtime.flink import LaunchOptions

        return PRESET_ENGINE_SETTINGS[options.view_as(LaunchOptions).bundle_preset][setting]
    return default


def speculative_updates(options: PipelineOptions | Any) -> str:
    """How often speculative updates leave the fused stage (``every_element`` for a
    training set)."""
    return str(_implied(options, "speculative_updates", "speculative", "every_element"))


def timer_grid_ms(options: PipelineOptions | Any) -> int:
    """The fused stage's timer grid (0 for a training set: finals when they are due)."""
    return int(_implied(options, "timer_grid_ms", "timer_grid_ms", 0))


def bootstrap_servers(options: PipelineOptions) -> str:
    """The ``--bootstrap_servers`` flag, which Beam itself defines."""
    return options.view_as(KafkaStreamsRunnerOptions).bootstrap_servers
