"""Wiring shared by the feature pipelines: sources, side outputs, sinks, the run."""

from __future__ import annotations

import faulthandler
import json
import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
)

from pipelines.options import FeatureOptions
from pipelines.storage import use_emulator_if_set
from runtime import state_cache, state_commit, transform_ids
from runtime.direct import apply_direct_preset
from runtime.flink import (
    ACTIVE_STATES,
    LaunchedJob,
    LaunchOptions,
    checkpoint_config,
    checkpoint_stats,
    input_watermarks,
    is_flink,
    new_launch_id,
    rest_port_of,
    run_until,
    with_flink_defaults,
)
from transforms.decode import DEAD, EVENTS, EventSchema, KeyedRecords, ReadEvents
from transforms.line_sink import AppendJsonLines
from transforms.merge import MergeFeatureVectors
from transforms.model import DeadLetter, FeatureUpdate
from transforms.redis_sink import RedisSinkConfig, WriteToRedis, redact_url

_LOG = logging.getLogger(__name__)

# Builds the features of one pipeline: (keyed-free events, or with
# --records_keyed_by_entity the raw KeyedRecords, options) -> (updates, late events).
FeatureGraph = Callable[[beam.PCollection | KeyedRecords, FeatureOptions],
                        tuple[list[beam.PCollection], list[beam.PCollection]]]


def write_lines(pcoll: beam.PCollection, path: str, label: str) -> None:
    """Writes JSON lines: exactly ``path`` for a bounded input; appended for a stream."""
    if pcoll.is_bounded:
        (pcoll
         | f"{label}ToJson" >> beam.Map(lambda r: r.to_json())
         | f"Write{label}" >> beam.io.WriteToText(path, shard_name_template="", num_shards=1))
    else:
        pcoll | f"Append{label}" >> AppendJsonLines(path)


class _LogDeadLetters(beam.DoFn):
    """Without --dead_letter, dead letters are logged (and still counted)."""

    def process(self, dead: DeadLetter) -> None:
        payload = dead.payload if isinstance(dead.payload, str) else repr(dead.payload)
        _LOG.warning("dead letter from %s: %s; payload %.200s", dead.source, dead.reason, payload)


def build(pipeline: beam.Pipeline, options: FeatureOptions, schema: EventSchema,
          features: FeatureGraph) -> None:
    """Adds source, features and sinks of a feature pipeline to ``pipeline``."""
    if options.records_keyed_by_entity and not options.topic:
        raise SystemExit("--records_keyed_by_entity reads Kafka record keys: give --topic")
    if options.input:
        decoded = pipeline | "ReadEvents" >> ReadEvents(options.input, schema)
    elif options.topic and options.records_keyed_by_entity:
        from pipelines.kafka_source import read_keyed_records

        records = read_keyed_records(pipeline, options, schema)
    elif options.topic:
        from pipelines.kafka_source import ReadEventsFromKafka

        decoded = pipeline | "ReadEvents" >> ReadEventsFromKafka(options, schema)
    else:
        raise SystemExit("give --input=FILE, or --bootstrap_servers and --topic")

    if options.records_keyed_by_entity:
        updates, late = features(records, options)
        dead = records.dead[0] if len(records.dead) == 1 else (
            records.dead | "FlattenDeadLetters" >> beam.Flatten())
    else:
        updates, late = features(decoded[EVENTS], options)
        dead = decoded[DEAD]
    # Typed, so updates cross stages with FeatureUpdateCoder instead of being pickled.
    all_updates = updates | "FlattenUpdates" >> beam.Flatten().with_output_types(FeatureUpdate)

    if options.dead_letter:
        write_lines(dead, options.dead_letter, "DeadLetters")
    if options.dead_letter_topic:
        from pipelines.kafka_source import WriteLinesToKafka

        dead | "DeadLettersToKafka" >> WriteLinesToKafka(
            options, options.dead_letter_topic)
    if not (options.dead_letter or options.dead_letter_topic):
        dead | "LogDeadLetters" >> beam.ParDo(_LogDeadLetters())
    if late and (options.late_output or options.late_topic):
        late_events = late | "FlattenLate" >> beam.Flatten()
        if options.late_output:
            write_lines(late_events, options.late_output, "LateEvents")
        if options.late_topic:
            from pipelines.kafka_source import WriteLinesToKafka

            late_events | "LateToKafka" >> WriteLinesToKafka(options, options.late_topic)
    if options.feature_log:
        write_lines(all_updates, options.feature_log, "FeatureLog")
    if options.redis_url:
        config = RedisSinkConfig(
            url=options.redis_url, layout=options.redis_layout, prefix=options.redis_prefix,
            key_ttl_s=options.redis_key_ttl_s, batch_size=options.redis_batch_size,
            flush_ms=options.redis_flush_ms)
        (all_updates
         | "MergeVectors" >> MergeFeatureVectors()
         | "WriteToRedis" >> WriteToRedis(config))


def run(argv: Sequence[str] | None, schema_file: str, features: FeatureGraph,
        name: str) -> dict[str, Any]:
    """Parses ``argv``, runs the pipeline, returns and prints its counters.

    A bounded replay runs to completion. On Flink the process follows its own
    job (found by the ``--launch_id`` it stamps on it, never "the newest job":
    a cluster may run other jobs) and cancels it on every way out (the end,
    an error, Ctrl-C, SIGTERM); a Kafka stream runs until it is cancelled, or
    with ``--max_records=N`` until N records are committed (processed, written
    to Redis and checkpointed). The summary names the job (``flink.job_id``,
    ``flink.job_name``).
    """
    use_emulator_if_set()
    argv = with_flink_defaults(list(argv or []))
    options = PipelineOptions(argv)
    options.view_as(SetupOptions).save_main_session = False
    apply_direct_preset(options)
    feature_options = options.view_as(FeatureOptions)
    flink = is_flink(argv)
    if flink:
        _stacks_on_sigusr1()
        launch = options.view_as(LaunchOptions)
        launch.launch_id = launch.launch_id or new_launch_id()
        naming = options.view_as(GoogleCloudOptions)
        naming.job_name = naming.job_name or f"{name}-{launch.launch_id[:8]}"
    schema = EventSchema(feature_options.reader_schema or schema_file)
    # Stateful steps keep their ids (and so their timers) across job upgrades.
    transform_ids.install()
    pipeline = beam.Pipeline(options=options)
    build(pipeline, feature_options, schema, features)
    # The pipeline holds its own copy of the options: that is what the runner sends.
    _scrub_secrets(pipeline.options.view_as(FeatureOptions))
    if flink:
        summary = _run_on_flink(pipeline, options, feature_options, schema)
    else:
        result = pipeline.run()
        result.wait_until_finish()
        summary = summarize(result)
    print(json.dumps({"pipeline": name, **summary}, sort_keys=True))
    return summary


def _run_on_flink(pipeline: beam.Pipeline, options: PipelineOptions,
                  feature_options: FeatureOptions, schema: EventSchema) -> dict[str, Any]:
    """Submits, follows and in the end cancels this process's own Flink job."""
    rest_port = rest_port_of(options.view_as(FlinkRunnerOptions).flink_master)
    launch = options.view_as(LaunchOptions)
    loopback = options.view_as(PortableOptions).environment_type == "LOOPBACK"
    if loopback:  # the job's Python workers run in this process
        if launch.state_cache_sizer == "estimate":
            state_cache.install()
        state_commit.install(launch.state_commit)
    job_name = options.view_as(GoogleCloudOptions).job_name
    job = LaunchedJob(rest_port, launch.launch_id, job_name)
    if launch.detached:
        if loopback or feature_options.max_records:
            raise SystemExit("--detached: the job must outlive this process, so its Python "
                             "workers run in worker pools (--environment_type=EXTERNAL) and "
                             "nothing here stops it (no --max_records)")
        pipeline.run()
        jid = job.wait_running()
        return {"flink.job_id": jid, "flink.job_name": job_name, "detached": True,
                "flink.rest": f"http://localhost:{rest_port}/#/job/running/{jid}/overview"}
    with job:
        result = pipeline.run()
        if feature_options.topic and feature_options.max_records:
            from pipelines.kafka_source import consumer_config

            group_config = consumer_config(feature_options, schema)
            group_config.pop("max.partition.fetch.bytes", None)
            summary = _run_stream_until(result, job, feature_options, group_config)
        elif feature_options.topic:
            summary = _follow_stream(result, job)
        else:
            result.wait_until_finish()
            summary = summarize(result)
    return {"flink.job_id": job.jid, "flink.job_name": job_name, **summary}


def _stacks_on_sigusr1() -> None:
    """``kill -USR1 <pid>`` prints the launcher's thread stacks to stderr: what a
    launcher that does not end (a job service that does not answer) waits for."""
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "SIGUSR1"):
        faulthandler.register(signal.SIGUSR1, all_threads=True)


def _follow_stream(result: Any, job: LaunchedJob) -> dict[str, Any]:
    """Follows an open-ended stream until its job ends (cancelled by Ctrl-C, SIGTERM,
    or on the cluster)."""
    jid = job.wait_running()
    print(f"Flink job {jid} ({job.job_name}) RUNNING; Ctrl-C or SIGTERM cancels it",
          flush=True)
    try:
        while (state := job.state_or_none() or "RUNNING") in ACTIVE_STATES:
            time.sleep(2.0)
    finally:
        _cancel_invocation(result)
    if state == "FAILED":
        raise SystemExit(f"Flink job {jid} FAILED; see the JobManager's log")
    return {"flink.final_state": state}


def _cancel_invocation(result: Any, timeout_s: float = 10.0) -> None:
    """Tells the job service the invocation is over, waiting at most ``timeout_s``.

    Its Cancel call has no deadline, and the job it names is cancelled on the
    cluster afterwards anyway (``LaunchedJob``): a job service slow to answer must
    not keep an interrupted launcher from getting there.
    """
    def cancel() -> None:
        try:
            result.cancel()
        except Exception:  # noqa: BLE001 (the job service may already be gone)
            pass

    thread = threading.Thread(target=cancel, name="cancel-invocation", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        print(f"the job service did not answer Cancel within {timeout_s:.0f} s; "
              "cancelling on the cluster", flush=True)


def _scrub_secrets(options: FeatureOptions) -> None:
    """Removes secrets from the options once the graph holds them.

    A runner shows its job's options (Flink: the web UI and REST job config);
    the sink, Kafka and decode transforms already carry what they need, so the
    options keep redacted URLs and no Kafka or schema registry client settings.
    """
    if options.redis_url:
        options.redis_url = redact_url(options.redis_url)
    if options.kafka_config:
        options.kafka_config = "<redacted>"
    if options.schema_registry_url:
        options.schema_registry_url = redact_url(options.schema_registry_url)
    if options.schema_registry_config:
        options.schema_registry_config = "<redacted>"


def _run_stream_until(result: Any, job: LaunchedJob, feature_options: FeatureOptions,
                      group_config: dict[str, str]) -> dict[str, Any]:
    """Drives a Flink streaming job until ``--max_records`` are committed, with progress."""
    from confluent_kafka import KafkaException

    from pipelines.kafka_source import committed_records

    target = feature_options.max_records
    rest_port = job.rest_port
    started = time.monotonic()
    last = {"at": 0.0, "n": -1}

    def done(jid: str) -> bool:
        n = last["n"]
        if n < target:
            try:
                n = committed_records(group_config, feature_options.topic)
            except KafkaException as e:  # a broker restart: keep the last count, retry
                print(f"  progress: Kafka unavailable ({e}); retrying", flush=True)
        now = time.monotonic()
        caught_up = False
        if n >= target:
            # Everything is read; finals need the watermark past the last events.
            # An idle KafkaIO partition moves its watermark to the wall clock.
            try:
                marks = input_watermarks(rest_port, jid)
            except OSError:  # a busy JobManager: ask again on the next poll
                marks = {}
            wanted = feature_options.stop_at_watermark_ms or (time.time() - 60) * 1000
            caught_up = bool(marks) and min(marks.values()) >= wanted
        if now - last["at"] >= 5 or caught_up:
            rate = n / max(now - started, 1e-9)
            print(f"  progress: {n}/{target} records committed ({rate:.0f}/s since submit)"
                  + ("; watermark caught up" if caught_up else ""), flush=True)
            last["at"] = now
        last["n"] = n
        return caught_up

    jid = run_until(result, done, job, timeout=feature_options.run_timeout_s, poll=1.0)
    stats = checkpoint_stats(rest_port, jid)
    config = checkpoint_config(rest_port, jid)
    return {"kafka.records_committed": last["n"],
            "flink.state_backend": config.get("state_backend"),
            "flink.checkpoints_completed": stats.get("counts", {}).get("completed", 0),
            "seconds": round(time.monotonic() - started, 1)}


def summarize(result: Any) -> dict[str, int]:
    """The pipeline's counters, named ``namespace.name``."""
    try:
        counters = result.metrics().query(MetricsFilter())["counters"]
    except (NotImplementedError, KeyError, AttributeError):
        return {}
    totals: dict[str, int] = {}
    for counter in counters:
        key = f"{counter.key.metric.namespace}.{counter.key.metric.name}"
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[key] = totals.get(key, 0) + int(value or 0)
    return totals
