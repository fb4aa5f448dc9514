"""The import rules of DEVELOPERS.md, checked on the source: services -> app and never the
reverse; FastAPI only in services/; torch only under app/models/; tests do not import bench/."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import ROOT


def imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, top-level module) of every import in `path`, lazy ones inside functions too."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module


def offending(folder: str, forbidden: tuple[str, ...], allowed: str = "") -> list[str]:
    found = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        if allowed and relative.startswith(allowed):
            continue
        for line, module in imports(path):
            if module.split(".")[0] in forbidden:
                found.append(f"{relative}:{line} imports {module}")
    return found


def test_the_library_never_imports_the_services_or_fastapi() -> None:
    assert offending("app", ("services", "fastapi", "starlette")) == []


def test_torch_is_imported_only_under_app_models() -> None:
    assert offending("app", ("torch", "sentence_transformers"), allowed="app/models/") == []
    assert offending("services", ("torch", "sentence_transformers")) == []


def test_services_do_not_import_each_other() -> None:
    for service in ("embedder", "reranker", "gateway"):
        others = [f"services.{o}" for o in ("embedder", "reranker", "gateway") if o != service]
        for path in (ROOT / "services" / service).rglob("*.py"):
            for line, module in imports(path):
                assert not module.startswith(tuple(others)), f"{path}:{line} imports {module}"


def test_tests_do_not_import_the_benchmarks() -> None:
    assert offending("tests", ("bench",)) == []
