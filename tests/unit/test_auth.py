"""API keys: digests, constant-time checks, per-key token buckets, placeholders refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.auth import ApiKeys, digest, presented_key
from app.config import GatewaySettings
from app.errors import Overloaded, SemsearchError, Unauthorized


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_plain_keys_digests_and_key_files(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# ops team\n{digest('from-file')}\n\nplain-in-file\n")
    keys = ApiKeys.from_settings(
        GatewaySettings(api_keys=["k1", digest("k2")], api_keys_file=keys_file)
    )
    assert keys.enabled
    for good in ("k1", "k2", "from-file", "plain-in-file"):
        assert len(keys.check(good)) == 8  # a loggable id, never the key
    assert keys.check("k1") != "k1"
    with pytest.raises(Unauthorized, match="unknown"):
        keys.check("k3")
    with pytest.raises(Unauthorized, match="required"):
        keys.check(None)
    assert not ApiKeys.from_settings(GatewaySettings()).enabled


def test_each_key_has_its_own_token_bucket() -> None:
    clock = Clock()
    keys = ApiKeys.from_settings(
        GatewaySettings(api_keys=["a", "b"], rate_limit_per_s=2, rate_limit_burst=3), clock
    )
    for _ in range(3):
        keys.check("a")
    with pytest.raises(Overloaded) as raised:
        keys.check("a")
    assert raised.value.retry_after_s == pytest.approx(0.5)
    keys.check("b")  # another key is not affected
    clock.now += 0.5  # one token back
    keys.check("a")
    with pytest.raises(Overloaded):
        keys.check("a")


def test_placeholder_keys_are_refused_in_production() -> None:
    with pytest.raises(SemsearchError, match="placeholder"):
        ApiKeys.from_settings(GatewaySettings(api_keys=["change-me"], environment="production"))
    assert ApiKeys.from_settings(GatewaySettings(api_keys=["change-me"])).enabled  # development


def test_key_from_either_header() -> None:
    assert presented_key("Bearer abc", None) == "abc"
    assert presented_key("bearer  abc ", None) == "abc"
    assert presented_key(None, "xyz") == "xyz"
    assert presented_key("Basic Zm9v", None) is None
    assert presented_key(None, None) is None


def test_comma_separated_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMSEARCH_API_KEYS", "one, two ,three")
    assert GatewaySettings().api_keys == ["one", "two", "three"]


def test_cli_prints_a_digest_the_gateway_accepts() -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    out = CliRunner().invoke(cli, ["hash-key", "my-key"]).output
    line = next(line for line in out.splitlines() if line.startswith("digest:"))
    keys = ApiKeys.from_settings(GatewaySettings(api_keys=[line.split()[1]]))
    assert keys.check("my-key")
    fresh = CliRunner().invoke(cli, ["hash-key"]).output
    assert "key:" in fresh and "digest: sha256:" in fresh


def test_scopes_and_collections_from_the_keys_file(tmp_path: Path) -> None:
    from app.auth import Scope
    from app.errors import Forbidden

    keys_file = tmp_path / "keys"
    keys_file.write_text(
        f"{digest('r')} read\nw write a,b\nadm ADMIN *\nold\n  # indented comment\n"
    )
    keys = ApiKeys.from_settings(GatewaySettings(api_keys=["env"], api_keys_file=keys_file))
    assert keys.grant("r").scope is Scope.READ
    assert keys.grant("w").collections == frozenset({"a", "b"})
    assert keys.grant("adm").scope is Scope.ADMIN and keys.grant("adm").collections is None
    assert keys.grant("old").scope is keys.grant("env").scope is Scope.WRITE
    keys.grant("w").check(Scope.WRITE, "a")
    keys.grant("w").check(Scope.READ)
    with pytest.raises(Forbidden, match="admin"):
        keys.grant("w").check(Scope.ADMIN, "a")
    with pytest.raises(Forbidden, match="collection 'c'"):
        keys.grant("w").check(Scope.READ, "c")
    with pytest.raises(Forbidden):
        keys.grant("r").check(Scope.WRITE)


@pytest.mark.parametrize("line", ["k owner", "k read a b"])
def test_a_bad_keys_file_line_fails_start_up(tmp_path: Path, line: str) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(line + "\n")
    with pytest.raises(SemsearchError, match="API keys file"):
        ApiKeys.from_settings(GatewaySettings(api_keys_file=keys_file))
