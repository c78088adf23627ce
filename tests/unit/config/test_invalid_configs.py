"""Every file in tests/config/invalid is refused with exactly the message in its .expected file."""

from __future__ import annotations

from pathlib import Path

import pytest

from apigate.config import ConfigError, load_config

INVALID = Path(__file__).resolve().parents[2] / "config" / "invalid"
CASES = sorted(INVALID.glob("*.yaml"))


def test_every_invalid_config_has_an_expected_message() -> None:
    """Each invalid YAML has its .expected file and there is one case per documented error."""
    assert len(CASES) >= 14
    for path in CASES:
        assert path.with_suffix(".expected").is_file(), path.name


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_invalid_config_is_refused_with_its_exact_message(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the file (by its name relative to the current directory) raises ConfigError whose
    text is exactly the expected ``FILE: dotted.path: message`` line."""
    monkeypatch.chdir(INVALID)
    with pytest.raises(ConfigError) as refused:
        load_config(path.name, env={})
    expected = path.with_suffix(".expected").read_text(encoding="utf-8").rstrip("\n")
    assert str(refused.value) == expected
    assert refused.value.lines()[0].startswith(f"{path.name}: ")
