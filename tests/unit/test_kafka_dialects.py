"""--kafka_config for both Kafka clients (pure logic; the real broker is in
tests/integration/test_kafka_security.py)."""

from __future__ import annotations

import pytest

from pipelines.kafka_dialects import for_java, for_python

SASL = {"security.protocol": "SASL_SSL", "sasl.username": "job", "sasl.password": "pw"}


def test_scram_gets_the_scram_login_module() -> None:
    java = for_java({**SASL, "sasl.mechanism": "SCRAM-SHA-512"})
    assert java["sasl.jaas.config"] == ('org.apache.kafka.common.security.scram.ScramLoginModule'
                                        ' required username="job" password="pw";')
    assert "sasl.username" not in java and "sasl.password" not in java


def test_unmapped_mechanism_under_sasl_is_an_error_without_the_password() -> None:
    with pytest.raises(ValueError, match="GSSAPI") as err:
        for_java(SASL)
    assert "pw" not in str(err.value).replace("password", "")


def test_credentials_without_sasl_in_use_reach_neither_java_nor_an_error() -> None:
    assert for_java({"sasl.username": "job", "sasl.password": "pw"}) == {}


def test_a_given_jaas_config_wins_and_stays_java_only() -> None:
    cfg = {**SASL, "sasl.mechanism": "PLAIN", "sasl.jaas.config": "custom;"}
    assert for_java(cfg)["sasl.jaas.config"] == "custom;"
    assert "sasl.jaas.config" not in for_python(cfg)


def test_client_certificate_needs_its_java_form() -> None:
    with pytest.raises(ValueError, match="ssl.keystore.location"):
        for_java({"ssl.certificate.location": "/c.pem", "ssl.key.location": "/k.pem"})
    java = for_java({"ssl.certificate.location": "/c.pem", "ssl.keystore.type": "PEM",
                     "ssl.keystore.location": "/both.pem"})
    assert java == {"ssl.keystore.type": "PEM", "ssl.keystore.location": "/both.pem"}
