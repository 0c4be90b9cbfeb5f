"""Client settings flags (``--kafka_config``, ``--schema_registry_config``) and the
schema registry's generated configuration (pure logic; the real registry is in
tests/integration/test_schema_registry.py)."""

from __future__ import annotations

import json

import pytest

from pipelines.kafka_source import client_config
from runners.schema_registry import RegistryUser, registry_properties


def test_json_and_at_file_give_the_same_settings(tmp_path):
    settings = {"basic.auth.user.info": "u:p w", "ssl.ca.location": "/etc/ca.pem"}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps(settings))
    assert client_config(json.dumps(settings), "--schema_registry_config") == settings
    assert client_config(f"@{path}", "--schema_registry_config") == settings
    assert client_config(None, "--schema_registry_config") == {}


@pytest.mark.parametrize("raw, message", [
    ('{"basic.auth.user.info": "u:secret-pw"', r"--schema_registry_config is not JSON"),
    ('["u:secret-pw"]', r"--schema_registry_config must be a JSON object"),
])
def test_bad_settings_name_the_flag_and_not_the_value(raw, message):
    with pytest.raises(ValueError, match=message) as e:
        client_config(raw, "--schema_registry_config")
    assert "secret-pw" not in str(e.value)


def test_registry_users_and_roles_go_to_the_properties_file_only():
    user = RegistryUser("dev", "pw-1", "sr-developer")
    text = registry_properties(8085, 8086, (user,))
    assert "quarkus.security.users.embedded.users.dev=pw-1\n" in text
    assert "quarkus.security.users.embedded.roles.dev=sr-developer\n" in text
    assert "quarkus.http.auth.basic=true\n" in text
    assert "apicurio.rules.global.compatibility=BACKWARD\n" in text
    assert "pw-1" not in repr(user)
    assert "quarkus.http.auth.basic" not in registry_properties(8085, 8086, ())
    with pytest.raises(ValueError, match="role must be one of"):
        RegistryUser("dev", "pw", "owner")
