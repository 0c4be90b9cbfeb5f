"""Where the local runtime's programs are: the cache that ``runners/install_runtime.sh``
fills (``$RTF_CACHE``, default ``~/.cache/rtfeatures``) and the Java that runs them.

The cache holds the Kafka broker's jars, Beam's Java jars (expansion service and
Flink job server) and a virtualenv whose pyflink wheel carries the Flink
distribution. Each lookup fails with ServiceError naming the install step when
its part of the cache is missing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from runners.process import ServiceError


def cache_dir() -> Path:
    """Where install_runtime.sh put jars and the Flink venv ($RTF_CACHE)."""
    return Path(os.environ.get("RTF_CACHE", str(Path.home() / ".cache" / "rtfeatures")))


def kafka_jars_dir() -> Path:
    return cache_dir() / "jars" / "kafka"


def beam_jars_dir() -> Path:
    return cache_dir() / "jars" / "beam"


def flink_home() -> Path:
    """The Flink distribution shipped inside the pyflink wheel of the Flink venv."""
    if os.environ.get("FLINK_HOME"):
        return Path(os.environ["FLINK_HOME"])
    venv = cache_dir() / "flink-venv"
    found = sorted(venv.glob("lib/python3*/site-packages/pyflink"))
    if not found:
        raise ServiceError(f"no pyflink distribution under {venv}; run runners/install_runtime.sh")
    return found[0]


def java_bin() -> str:
    java = shutil.which("java")
    if java is None:
        raise ServiceError("java not found on PATH (Java 17 is required)")
    return java


def classpath(jar_dir: Path) -> str:
    """A ``-cp`` entry for every jar in ``jar_dir``."""
    if not jar_dir.is_dir() or not any(jar_dir.glob("*.jar")):
        raise ServiceError(f"no jars in {jar_dir}; run runners/install_runtime.sh")
    return str(jar_dir / "*")


def registry_home() -> Path:
    """The unpacked Apicurio Registry application (``quarkus-run.jar`` and its libs)."""
    home = cache_dir() / "jars" / "registry"
    if not (home / "quarkus-run.jar").exists():
        raise ServiceError(f"no schema registry under {home}; run runners/install_runtime.sh")
    return home


def registry_java() -> str:
    """The Java 21+ that install_runtime.sh found for the schema registry."""
    recorded = cache_dir() / "registry-java"
    java = os.environ.get("RTF_REGISTRY_JAVA") or (
        recorded.read_text().strip() if recorded.exists() else "")
    if not java or not Path(java).exists():
        raise ServiceError("no Java 21+ recorded for the schema registry; "
                           "run runners/install_runtime.sh (or set RTF_REGISTRY_JAVA)")
    return java
