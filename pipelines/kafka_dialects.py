"""One ``--kafka_config`` for two Kafka clients: librdkafka (Python) and Java (KafkaIO).

The job talks to Kafka twice: the Java client inside Beam's cross-language
KafkaIO reads the topic and writes dead letters; confluent_kafka (librdkafka)
produces events and follows the group's committed offsets. The two spell
security settings differently, and each refuses the other's names. Users
write librdkafka's names (those of ``confluent_kafka``); the Java client
gets the equivalent:

==============================  =============================================
librdkafka                      Java client
==============================  =============================================
``sasl.username``,              ``sasl.jaas.config`` (PLAIN or SCRAM login
``sasl.password``               module; other mechanisms: give it yourself)
``ssl.ca.location`` (PEM file)  ``ssl.truststore.type=PEM``,
                                ``ssl.truststore.location``
==============================  =============================================

Names shared by both (``security.protocol``, ``sasl.mechanism``, ...) go to
both. Java-only names (``sasl.jaas.config``, ``ssl.truststore.*``,
``ssl.keystore.*``) go to the Java client only.

>>> cfg = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
...        "sasl.username": "feature-job", "sasl.password": 'p"w',
...        "ssl.ca.location": "/etc/kafka/ca.pem"}
>>> java = for_java(cfg)
>>> print(java["sasl.jaas.config"].split(".")[-1])
PlainLoginModule required username="feature-job" password="p\\"w";
>>> sorted(k for k in java if k.startswith("ssl"))
['ssl.truststore.location', 'ssl.truststore.type']
>>> for_python({**cfg, "ssl.truststore.password": "x"}) == cfg
True
"""

from __future__ import annotations

from collections.abc import Mapping

_JAVA_ONLY = ("sasl.jaas.config", "ssl.truststore.", "ssl.keystore.")
_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


def _java_only(key: str) -> bool:
    return key.startswith(_JAVA_ONLY)


def for_python(config: Mapping[str, str]) -> dict[str, str]:
    """The settings for a confluent_kafka (librdkafka) client."""
    return {k: v for k, v in config.items() if not _java_only(k)}


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _jaas_config(config: Mapping[str, str]) -> str | None:
    mechanism = config.get("sasl.mechanism", "GSSAPI").upper()  # librdkafka's default
    module = _LOGIN_MODULES.get(mechanism)
    if module is None:
        if config.get("security.protocol", "").upper().startswith("SASL"):
            raise ValueError(f"--kafka_config: sasl.mechanism {mechanism} has no login "
                             f"module mapping for the Java client; give sasl.jaas.config")
        return None  # no SASL in use: neither client reads the credentials
    return (f"{module} required username={_quoted(config['sasl.username'])}"
            f" password={_quoted(config.get('sasl.password', ''))};")


def for_java(config: Mapping[str, str]) -> dict[str, str]:
    """The settings for the Java client of KafkaIO (see the module doc for the mapping).

    Raises:
        ValueError: a librdkafka setting with no Java equivalent given (the
            message names the Java settings to add; it never holds a value).
    """
    out = {k: v for k, v in config.items()
           if k not in ("sasl.username", "sasl.password", "ssl.ca.location",
                        "ssl.certificate.location", "ssl.key.location")}
    if "sasl.username" in config and "sasl.jaas.config" not in config:
        jaas = _jaas_config(config)
        if jaas is not None:
            out["sasl.jaas.config"] = jaas
    if "ssl.ca.location" in config and "ssl.truststore.location" not in config:
        out["ssl.truststore.type"] = "PEM"
        out["ssl.truststore.location"] = config["ssl.ca.location"]
    if ("ssl.certificate.location" in config or "ssl.key.location" in config) and not any(
            k.startswith("ssl.keystore.") for k in config):
        raise ValueError("--kafka_config: a client certificate (ssl.certificate.location / "
                         "ssl.key.location) needs its Java form too: ssl.keystore.type=PEM and "
                         "ssl.keystore.location (one PEM file with the key and its chain)")
    return out
