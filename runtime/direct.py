"""DirectRunner preset."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TypeOptions
from apache_beam.runners.portability.fn_api_runner import worker_handlers


def apply_direct_preset(options: PipelineOptions) -> None:
    """Makes ``--runner=DirectRunner`` run on Beam's Python runners, never Prism,
    without their user-state cache.

    Beam 2.77's DirectRunner first tries Prism, which downloads its binary from
    GitHub at run time (offline here: it fails, then falls back) and fires
    ``AfterCount`` triggers differently (apache/beam#33623). Prism is skipped
    when ``allow_unsafe_triggers`` is set; that flag only lifts a
    construction-time check on triggers, and our pipelines use none.

    The Python runner's worker caches user state across bundles under a cache
    token, but it hands out a new token for every bundle
    (``FnApiRunner.get_cache_token_generator(static=False)``), so nothing cached
    is ever read back; within a bundle each key's state object is kept anyway.
    The cache still sizes every value it stores (``objsize``), which first
    collects the globals of every loaded module (about 1,900 with Beam): the
    top cost of a stateful pipeline's profile, per key and bundle. The runner
    has no option for it; its worker reads this constant when it is created,
    and 0 disables the cache (state then goes straight to the runner's
    in-memory state store, as it did on every cache miss).
    """
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "direct"):
        options.view_as(TypeOptions).allow_unsafe_triggers = True
        worker_handlers.STATE_CACHE_SIZE_MB = 0
