"""Scoped API keys over HTTP: a read key cannot write, a write key cannot create or delete a
collection, a key limited to collections cannot touch others, no key is a 401."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.auth import digest
from app.config import GatewaySettings
from services.gateway.main import create_app
from tests.services.conftest import asgi_client, assert_error
from tests.services.test_gateway_writes import docs, settings  # noqa: F401 (the fixture)


@pytest.fixture
def scoped(settings: GatewaySettings, tmp_path: Path) -> GatewaySettings:  # noqa: F811
    keys = tmp_path / "keys"
    keys.write_text(
        "# key                      scope   collections\n"
        f"{digest('reader')}         read\n"
        "writer                      write\n"
        f"{digest('admin')}          admin   *\n"
        "notes-admin                 admin   notes,drafts\n"
        "legacy\n"
    )
    return settings.model_copy(update={"api_keys_file": keys, "api_keys": ["from-env"]})


def key(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def test_scopes(scoped: GatewaySettings) -> None:
    write = "/v1/collections/default/documents"
    async with asgi_client(create_app(scoped)) as client:
        assert_error(await client.post(write, json=docs("a")), 401, "unauthorized")
        assert_error(await client.get("/v1/collections/default"), 401, "unauthorized")
        assert_error(
            await client.post(write, json=docs("a"), headers=key("reader")), 403, "forbidden"
        )
        assert (await client.get("/v1/collections/default", headers=key("reader"))).is_success
        search = {"query": "Berlin", "collection": "default"}
        assert (await client.post("/v1/search", json=search, headers=key("reader"))).is_success
        # existing keys (alone on a line, or in SEMSEARCH_API_KEYS) read and write
        for writer in ("writer", "legacy", "from-env"):
            reply = await client.post(write, json=docs("a"), headers=key(writer))
            assert reply.status_code == 202, reply.text
            assert (await client.post("/v1/search", json=search, headers=key(writer))).is_success
            assert_error(
                await client.delete("/v1/collections/default?confirm=true", headers=key(writer)),
                403,
                "forbidden",
            )
            assert_error(
                await client.put("/v1/collections/x", json={}, headers=key(writer)),
                403,
                "forbidden",
            )
        # a key limited to collections: its own yes, others no (and not in the list)
        limited = key("notes-admin")
        assert (
            await client.put("/v1/collections/notes", json={}, headers=limited)
        ).status_code == 201
        assert_error(
            await client.put("/v1/collections/other", json={}, headers=limited),
            403,
            "forbidden",
            "collection",
        )
        assert_error(
            await client.post("/v1/search", json=search, headers=limited),
            403,
            "forbidden",
            "collection",
        )
        listed = (await client.get("/v1/collections", headers=limited)).json()["collections"]
        assert set(listed) == {"notes"}
        assert_error(
            await client.get("/v1/collections/default/documents/berlin", headers=limited),
            403,
            "forbidden",
        )
        deleted = await client.delete("/v1/collections/notes?confirm=true", headers=key("admin"))
        assert deleted.status_code == 200, deleted.text
        assert_error(await client.post("/admin/reload", headers=key("reader")), 403, "forbidden")
