"""Transform ids that stay the same when a job is upgraded.

Beam's Python SDK names each transform in the pipeline it sends to the runner
``ref_AppliedPTransform_<label>_<n>``, where ``n`` counts the transforms
applied before it. On Flink, a stateful stage's pending timers are kept in
the job's state under that id (with the timer family). A new version of the
job that applies one more transform before a stateful stage (a feature
declared earlier in the catalogue, a step added to the source) gives the stage
another ``n``: restored from a savepoint of the old version, the first timer
that fires finds no receiver (``No receiver found for timer ...``) and the job
fails and restarts for ever, although its state restored.

``install()`` makes the id of every Python transform its full label (which
Beam already keeps unique per pipeline), so a stateful step keeps its id, and
its timers, as long as its label stays. Two labels that differ only in
characters an id cannot hold get ``_2``, ``_3`` ... in the order applied.
Transforms expanded by a Java expansion service (KafkaIO) keep the ids their
service gave them. The patch is Beam's ``ComponentIdMap`` for transforms only;
coders, PCollections, windowing strategies and environments keep Beam's ids.

Savepoints written before ids were labels carry the numbered ids: such a job
restores its state but not its timers. Upgrade across that change by starting
the new version without ``--savepoint_path`` and replaying the topic from
offset 0 (the sink's ``as_of`` guard makes the replay exact).
"""

from __future__ import annotations

from typing import Any

from apache_beam import pipeline as beam_pipeline

_beam_unique_ref = beam_pipeline.ComponentIdMap._unique_ref
_TAKEN = "_rtf_transform_ids"


def _label_ref(self: beam_pipeline.ComponentIdMap, obj: Any = None, obj_type: Any = None,
               label: str | None = None) -> str:
    if obj_type is not beam_pipeline.AppliedPTransform:
        return _beam_unique_ref(self, obj, obj_type, label)
    taken: set[str] = self.__dict__.setdefault(_TAKEN, set())
    base = self._normalize(f"{self.namespace}_{obj_type.__name__}_"
                           f"{label or type(obj).__name__}")
    ref, n = base, 1
    while ref in taken:
        n += 1
        ref = f"{base}_{n}"
    taken.add(ref)
    return ref


def install() -> None:
    """From now on, transforms of pipelines built in this process get label ids."""
    beam_pipeline.ComponentIdMap._unique_ref = _label_ref  # type: ignore[method-assign]
