"""The FastAPI example, driven through httpx on every event loop."""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.anyio

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "fastapi_app.py"


def _load_example(monkeypatch: pytest.MonkeyPatch, url: str) -> Any:
    monkeypatch.setenv("DATABASE_URL", url)
    spec = importlib.util.spec_from_file_location("fastapi_app_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # mapped annotations resolve here
    spec.loader.exec_module(module)
    return module


@pytest.fixture
async def client(monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> AsyncIterator[Any]:
    module = _load_example(monkeypatch, sqlite_url)
    app = module.create_app(sqlite_url)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c


async def test_crud_through_the_api(client: Any) -> None:
    r = await client.post("/authors", json={"name": "Ursula"})
    assert r.status_code == 201
    author_id = r.json()["id"]
    for title in ("A Wizard of Earthsea", "The Dispossessed"):
        r = await client.post(f"/authors/{author_id}/books", json={"title": title})
        assert r.status_code == 201
    r = await client.get(f"/authors/{author_id}")
    assert r.status_code == 200
    assert [b["title"] for b in r.json()["books"]] == ["A Wizard of Earthsea", "The Dispossessed"]
    r = await client.post("/authors", json={"name": "Italo"})
    r = await client.get("/authors")
    assert [(a["name"], len(a["books"])) for a in r.json()] == [("Ursula", 2), ("Italo", 0)]
    assert (await client.get("/authors/999")).status_code == 404
    assert (await client.post("/authors/999/books", json={"title": "x"})).status_code == 404
    assert (await client.delete(f"/authors/{author_id}")).status_code == 204
    r = await client.get("/authors")
    assert [a["name"] for a in r.json()] == ["Italo"]
    assert (await client.delete(f"/authors/{author_id}")).status_code == 404
