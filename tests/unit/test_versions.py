"""The installed Beam pair is the supported one, and a different one is reported."""

from __future__ import annotations

import apache_beam
import pytest

from runners import versions


def test_the_installed_pair_is_the_supported_one() -> None:
    assert versions.problems() == []


def test_another_python_sdk_is_reported(monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(apache_beam, "__version__", "2.62.0")
    assert versions.main([]) == 1
    assert "apache-beam 2.62.0 is installed" in capsys.readouterr().err
