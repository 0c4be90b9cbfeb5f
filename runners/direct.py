"""DirectRunner preset."""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TypeOptions


def apply_direct_preset(options: PipelineOptions) -> None:
    """Makes ``--runner=DirectRunner`` run on Beam's Python runners, never Prism.

    Beam 2.77's DirectRunner first tries Prism, which downloads its binary from
    GitHub at run time (offline here: it fails, then falls back) and fires
    ``AfterCount`` triggers differently (apache/beam#33623). Prism is skipped
    when ``allow_unsafe_triggers`` is set; that flag only lifts a
    construction-time check on triggers, and our pipelines use none.
    """
    runner = options.view_as(StandardOptions).runner
    if runner in (None, "DirectRunner", "direct"):
        options.view_as(TypeOptions).allow_unsafe_triggers = True
