#!/usr/bin/env bash
# Install the local runtime for rtfeatures (idempotent, non-interactive):
#   - JVM jars from Maven Central (runners/jars/pom.xml) into $RTF_CACHE/jars
#       kafka/  Kafka 3.9.1 broker (KRaft) + reload4j logging
#       beam/   Beam 2.62.0 Flink 1.19 job server + Kafka expansion service + RocksDB
#       sql/    Flink SQL Kafka connector 3.2.0-1.19 (the Flink SQL peer)
#       registry/  Apicurio Registry 3.3.3, the released Quarkus app (schema registry)
#   - the Flink 1.19.0 distribution (bundled in the apache-flink wheel) in a
#     separate venv $RTF_CACHE/flink-venv (never the project venv: it pins an old Beam),
#     with py4j and ruamel.yaml for PyFlink's Table API client
#   - redis-server and libjemalloc2 (Debian packages), Java 17 and Maven if missing
#   - a Java 21 or newer for the schema registry (found, or installed from apt)
# A warm machine returns in well under a second (stamp files).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RTF_CACHE="${RTF_CACHE:-$HOME/.cache/rtfeatures}"
FLINK_PY_VERSION="1.19.0"
PYTHON="${PYTHON:-python3.11}"
export DEBIAN_FRONTEND=noninteractive

log() { echo "[install-runtime] $*"; }

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi
APT_UPDATED=0
apt_install() {
  if ! $SUDO apt-get install -y -q "$@" >/dev/null 2>&1; then
    if [ "$APT_UPDATED" = 0 ]; then $SUDO apt-get update -q >/dev/null; APT_UPDATED=1; fi
    $SUDO apt-get install -y -q "$@" >/dev/null
  fi
}

# --- system packages -------------------------------------------------------
command -v java >/dev/null 2>&1 || { log "installing Java 17"; apt_install openjdk-17-jre-headless; }
command -v mvn >/dev/null 2>&1 || { log "installing Maven"; apt_install maven; }
command -v redis-server >/dev/null 2>&1 || { log "installing redis-server"; apt_install redis-server; }
# Flink's JVMs run on jemalloc, as in Flink's own image (the deployment's); without
# it they run on glibc's malloc.
[ -e "/usr/lib/$(uname -m)-linux-gnu/libjemalloc.so.2" ] || {
  log "installing libjemalloc2"; apt_install libjemalloc2 || log "libjemalloc2 not installable: Flink runs on glibc malloc"; }

# --- jars ------------------------------------------------------------------
mkdir -p "$RTF_CACHE/jars"
POM_HASH="$(cat "$ROOT"/runners/jars/pom.xml "$ROOT"/runners/jars/*/pom.xml | sha256sum | cut -c1-16)"
JAR_STAMP="$RTF_CACHE/jars/.stamp-$POM_HASH"
if [ ! -f "$JAR_STAMP" ]; then
  log "fetching jars with Maven into $RTF_CACHE/jars"
  start=$(date +%s)
  rm -rf "$RTF_CACHE/jars/kafka" "$RTF_CACHE/jars/beam" "$RTF_CACHE/jars/sql" \
    "$RTF_CACHE/jars/registry" "$RTF_CACHE"/jars/.stamp-*
  mvn -B -q -f "$ROOT/runners/jars/pom.xml" package -Drtf.jars="$RTF_CACHE/jars"
  touch "$JAR_STAMP"
  log "jars: $(ls "$RTF_CACHE/jars/kafka" | wc -l) kafka, $(ls "$RTF_CACHE/jars/beam" | wc -l) beam, registry $(du -sh "$RTF_CACHE/jars/registry" | cut -f1) ($(du -sh "$RTF_CACHE/jars" | cut -f1)) in $(( $(date +%s) - start ))s"
fi

# --- Java for the schema registry (its classes are Java 21) -----------------
java_feature() { "$1" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p'; }
REGISTRY_JAVA=""
for candidate in "${RTF_REGISTRY_JAVA:-}" "$(command -v java || true)" /usr/lib/jvm/*/bin/java; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(java_feature "$candidate")" -ge 21 ] 2>/dev/null; then
    REGISTRY_JAVA="$candidate"; break
  fi
done
if [ -z "$REGISTRY_JAVA" ]; then
  log "installing a Java 21+ for the schema registry"
  apt_install openjdk-21-jre-headless || apt_install openjdk-25-jre-headless || true
  for candidate in /usr/lib/jvm/*/bin/java; do
    if [ "$(java_feature "$candidate")" -ge 21 ] 2>/dev/null; then REGISTRY_JAVA="$candidate"; break; fi
  done
fi
[ -n "$REGISTRY_JAVA" ] || { log "no Java 21 or newer found or installable (set RTF_REGISTRY_JAVA)"; exit 1; }
echo "$REGISTRY_JAVA" > "$RTF_CACHE/registry-java"

# --- Flink distribution ----------------------------------------------------
FLINK_VENV="$RTF_CACHE/flink-venv"
FLINK_STAMP="$FLINK_VENV/.stamp-apache-flink-$FLINK_PY_VERSION"
if [ ! -f "$FLINK_STAMP" ]; then
  log "installing Flink $FLINK_PY_VERSION (apache-flink wheel) into $FLINK_VENV"
  start=$(date +%s)
  rm -rf "$FLINK_VENV"
  "$PYTHON" -m venv "$FLINK_VENV"
  "$FLINK_VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
    "apache-flink==$FLINK_PY_VERSION" "apache-flink-libraries==$FLINK_PY_VERSION"
  touch "$FLINK_STAMP"
  log "flink: $(du -sh "$FLINK_VENV" | cut -f1) in $(( $(date +%s) - start ))s"
fi

# PyFlink's Table API client (the benchmarks' Flink SQL peer) needs only py4j and
# ruamel.yaml (it reads the Flink config): the wheel's other requirements pin an
# old Beam and serve Python UDFs, unused.
if ! "$FLINK_VENV/bin/python" -c "import py4j, ruamel.yaml" 2>/dev/null; then
  "$FLINK_VENV/bin/pip" install -q --disable-pip-version-check "py4j==0.10.9.7" \
    "ruamel.yaml==0.18.6"
fi

log "runtime ready in $RTF_CACHE"
