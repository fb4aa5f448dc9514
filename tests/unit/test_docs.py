"""The README's promises that can drift: the configuration table and the two commands."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.conftest import ROOT


def _settings_table_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "settings_table", ROOT / "scripts" / "settings_table.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_configuration_table_matches_the_settings_classes() -> None:
    table = _settings_table_module()
    assert table.readme_block() == table.render().strip("\n"), (
        "README.md is out of date: run `.venv/bin/python scripts/settings_table.py --write`"
    )


def test_readme_gives_the_two_commands_and_ci_runs_the_second() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    makefile = (ROOT / "Makefile").read_text()
    assert "run: ##" in makefile
    assert "test: ##" in makefile
    for script in ("bootstrap.sh", "run.sh", "test.sh"):
        assert (ROOT / "scripts" / script).stat().st_mode & 0o111, script
    assert Path(ROOT / ".ci" / "run").stat().st_mode & 0o111
