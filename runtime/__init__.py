"""What a pipeline needs at run time on Flink: presets, the KafkaIO shim, REST
helpers, the Python worker pool and its SDK workers, the state-cache sizer.

Nothing here imports the local-services harness (``runners``): a job
submitted from CI or a pod needs only this package and ``pipelines``.
"""
