"""The one supported version pair, checked by ``make install``.

The Python SDK is apache-beam 2.77.0 (the project's dependency); the Java side
that runs it on Flink (job server, Flink runner, KafkaIO expansion service) is
Beam Java 2.62.0 on Flink 1.19.0, the newest release whose runner, job service
and KafkaIO all resolve from the Maven registry reachable here (docs/RUNTIME.md).
The two meet only at Beam's portability protocols (Runner API pipeline protos,
Fn API, job and expansion services), which are versioned and kept compatible;
the one gap found, KafkaIO's external configuration, is bridged by
``runtime/kafka_io.py``. The whole suite and ``make faults`` run on this pair.

    python -m runners.versions   # exit 1 with the reason if the installed pair differs
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

BEAM_PYTHON = "2.77.0"
BEAM_JAVA = "2.62.0"
FLINK = "1.19.0"
JAVA_JARS = (f"beam-runners-flink-1.19-{BEAM_JAVA}.jar",
             f"beam-runners-java-job-service-{BEAM_JAVA}.jar",
             f"beam-sdks-java-expansion-service-{BEAM_JAVA}.jar",
             f"beam-sdks-java-io-kafka-{BEAM_JAVA}.jar")


def problems() -> list[str]:
    """What differs from the supported pair (empty: all as supported)."""
    import apache_beam

    from runners.services import FLINK_VERSION, beam_jars_dir

    found = []
    if apache_beam.__version__ != BEAM_PYTHON:
        found.append(f"apache-beam {apache_beam.__version__} is installed; the supported "
                     f"Python SDK is {BEAM_PYTHON} (pip install -e . pins it)")
    jars = beam_jars_dir()
    missing = [j for j in JAVA_JARS if not (jars / j).exists()]
    if missing:
        found.append(f"Beam Java {BEAM_JAVA} jars missing in {jars}: {', '.join(missing)} "
                     "(bash runners/install_runtime.sh fetches them)")
    if FLINK_VERSION != FLINK:
        found.append(f"the local cluster is Flink {FLINK_VERSION}; the Beam Java {BEAM_JAVA} "
                     f"runner is built for Flink {FLINK}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    found = problems()
    if found:
        print("unsupported Beam version pair:\n  " + "\n  ".join(found), file=sys.stderr)
        return 1
    print(f"Beam Python {BEAM_PYTHON} <-> Beam Java {BEAM_JAVA} on Flink {FLINK}: "
          "the supported pair")
    return 0


if __name__ == "__main__":
    sys.exit(main())
