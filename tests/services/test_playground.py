"""The playground page (GET /) in a real headless Chromium, against a gateway on a real port.

Playwright drives Debian's `chromium` (`apt-get install chromium`; `make test` installs it):
Playwright's own browser download is not used. The gateway runs under uvicorn in a thread of
the test process, so a test can hand it a pipeline with a broken reranker.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright

from app.assembly import build_pipeline
from app.config import EmbedderSettings, GatewaySettings, RerankerSettings
from app.errors import RerankerUnavailable
from app.index.faiss.index import FaissIndex
from app.ingest.chunking import Chunker, WordTokenizer
from app.ingest.indexer import index_documents
from app.models.fake import FakeEmbedder, FakeReranker
from app.types import Document
from harness.processes import free_port
from services.gateway.main import create_app
from tests.conftest import SMALL_DOCS, faiss_options

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("SEMSEARCH_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
API_KEY = "playground-test-key"
TIMEOUT_MS = 20_000  # two shared cores: a search plus a redraw can take a while

EXTRA_DOCS = [
    # astral characters (two UTF-16 units each in JavaScript) before every match
    Document(
        "crab",
        "🦀🦀 Ferris the crab is the mascot of Rust; 𝄞 𠀋 🦀 before the crab again.",
        "🦀 Ferris the crab",
        {"lang": "en", "topic": "animal"},
    ),
    # markup in a document must show as text, never run
    Document(
        "markup",
        "<script>window.pwned = 1</script> A page about <b>markup</b> injection in results "
        '<i onclick="window.pwned = 3">and after them</i>.',
        '<img src="x" onerror="window.pwned = 2">Markup injection',
        {"lang": "en", "topic": "software"},
    ),
    # long enough to be cut into chunks (40 words each): volcanoes in two of them
    Document(
        "volcano",
        "Volcanoes erupt molten rock called lava from deep under the crust of the planet. "
        + "Filler words about geology and maps and rivers and valleys and plains. " * 6
        + "Volcanoes also release ash and gas that change the weather for years.",
        "Volcanoes",
        {"lang": "en", "topic": "earth"},
    ),
]
SECOND_DOCS = [
    Document("tea", "Green tea is steamed, black tea is oxidised.", "Tea", {"lang": "en"}),
    Document("coffee", "Coffee beans are roasted seeds.", "Coffee", {"lang": "en"}),
]


# ---- the browser ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, driven by Playwright; the tests fail (never skip) without
    it, since `make test` installs it. Module-scoped: Playwright's sync API keeps an event
    loop running on the main thread while it is open, which async tests elsewhere cannot
    share."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        found = shutil.which("chromium")
        pytest.fail(
            f"chromium is not installed at {CHROMIUM} (on PATH: {found}); `make test` installs "
            "it as root with `apt-get install chromium`, or set SEMSEARCH_TEST_CHROMIUM"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (its own storage and cookies) that fails the test on a script error or
    on a request anywhere but the gateway (the page must work offline: no CDN)."""
    expect.set_options(timeout=TIMEOUT_MS)
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    tab = context.new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    elsewhere: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on(
        "request",
        lambda r: None if r.url.startswith("http://127.0.0.1:") else elsewhere.append(r.url),
    )
    yield tab
    context.close()
    assert errors == [], errors
    assert elsewhere == [], elsewhere


# ---- the gateway on a real port ------------------------------------------------------------


def publish(root: Path, name: str, docs: list[Document]) -> None:
    """Index `docs` into collection `name` under `root` (created when new) with the fake
    embedder the gateway uses, chunked at 40 words, and publish a generation."""
    embedder = FakeEmbedder(model_id="fake:embedder")
    chunker = Chunker(WordTokenizer(embedder.info.max_tokens or 256), max_tokens=40, overlap=4)

    async def build() -> None:
        index = await FaissIndex.create(
            root, name, embedder.info.model_id, embedder.info.dimension or 0, faiss_options()
        )
        await index_documents(docs, index, embedder, chunker=chunker, batch_size=4)
        await index.close()

    # Playwright's sync API keeps an event loop running on this thread: build on another
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, build()).result()


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Collection `default` (SMALL_DOCS and the documents above, `volcano` in chunks) and
    collection `second`."""
    root = tmp_path_factory.mktemp("playground-index")
    publish(root, "default", SMALL_DOCS + EXTRA_DOCS)
    publish(root, "second", SECOND_DOCS)
    return root


def fake_models() -> tuple[EmbedderSettings, RerankerSettings]:
    return EmbedderSettings(backend="fake", model="embedder"), RerankerSettings(backend="fake")


@contextmanager
def serve(settings: GatewaySettings, reranker: FakeReranker | None = None) -> Iterator[str]:
    """The gateway (fake models, `reranker` instead of the fake one when given) under uvicorn
    in a thread; yields its URL once /ready answers 200."""
    pipeline = build_pipeline(settings, *fake_models())
    if reranker is not None:
        pipeline.reranker = reranker
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, pipeline), host="127.0.0.1", port=port, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="playground-gateway", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert thread.is_alive(), "the gateway stopped while starting"
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway is not ready after 60 s"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def gateway(index_dir: Path) -> Iterator[str]:
    with serve(GatewaySettings(index_dir=index_dir)) as url:
        yield url


class DownReranker(FakeReranker):
    async def score(self, *args: object, **kwargs: object) -> list[float]:
        raise RerankerUnavailable("reranker service is down")


def search(page: Page, query: str) -> None:
    """Type `query` and press Enter; wait until the answer or an error is drawn."""
    page.fill("#query", query)
    page.press("#query", "Enter")
    page.wait_for_selector("#answer[aria-busy=false]:not([hidden]), #error:not([hidden])")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


# ---- the tests -----------------------------------------------------------------------------


def test_query_shows_documents_with_highlights(page: Page, gateway: str, tmp_path: Path) -> None:
    page.goto(gateway + "/")
    expect(page.locator("#collection")).to_have_value("default")
    expect(page.locator("#collection-info")).to_contain_text("generation 1")
    search(page, "capital of Germany")

    hits = page.locator("#results > li.hit")
    first = hits.first
    expect(first).to_have_attribute("data-id", "berlin")
    expect(first.locator("h2")).to_have_text("Berlin")
    expect(first.locator(".snippet mark")).to_have_text(["capital", "Germany"])
    expect(first.locator(".scores")).to_contain_text("found by")
    expect(first.locator(".chunks li")).to_have_text(
        [re.compile(r"^berlin \(rank 1, -?\d+\.\d{3}\)$")]
    )
    expect(first.locator(".metadata")).to_contain_text("topic city")
    summary = page.locator("#summary")
    expect(summary).to_contain_text("mode hybrid")
    expect(summary).to_contain_text("reranked")
    expect(summary).not_to_contain_text("not reranked")
    expect(summary).to_contain_text("collection default (faiss, generation 1)")
    expect(page.locator("#degraded")).to_be_hidden()
    for stage in ("embed", "ann", "lexical", "rerank", "total"):
        expect(page.locator(f"#timings li[data-stage={stage}]")).to_contain_text(" ms")
    assert hits.count() >= 2
    ids = hits.evaluate_all("items => items.map(item => item.dataset.id)")
    assert len(ids) == len(set(ids))  # one place per document

    # what the screenshot shows: the hits and their marks, drawn and visible
    expect(first.locator(".snippet mark").first).to_be_visible()
    shot = tmp_path / "playground.png"
    page.screenshot(path=str(shot), full_page=True)
    width, height = png_size(shot)
    assert width == 1100 and height >= 900


def test_matched_chunks_are_listed_under_their_document(page: Page, gateway: str) -> None:
    page.goto(gateway + "/")
    search(page, "volcanoes lava ash")
    first = page.locator("#results > li.hit").first
    expect(first).to_have_attribute("data-id", "volcano")
    chunks = first.locator(".chunks li")
    expect(chunks).not_to_have_count(0)
    texts = chunks.all_inner_texts()
    assert len(texts) >= 2, texts  # lava and ash are in different chunks
    assert all(t.startswith("volcano#") for t in texts), texts
    expect(first.locator(".snippet mark").first).to_be_visible()
    expect(first.locator("details summary")).to_have_text(re.compile(r"^Text of volcano#\d+$"))
    # only one place for the document, whatever the number of its chunks
    expect(page.locator("#results > li.hit[data-id=volcano]")).to_have_count(1)


def test_switching_to_lexical_is_sent_and_shown(page: Page, gateway: str) -> None:
    page.goto(gateway + "/")
    page.get_by_label("lexical").check()
    page.get_by_label("rerank").uncheck()
    with page.expect_request("**/v1/search") as sent:
        search(page, "programming language")
    body = sent.value.post_data_json
    assert body["mode"] == "lexical" and body["rerank"] is False
    summary = page.locator("#summary")
    expect(summary).to_contain_text("mode lexical")
    expect(summary).to_contain_text("not reranked")
    expect(summary).not_to_contain_text("fusion")
    hits = page.locator("#results > li.hit")
    expect(hits).to_have_count(2)  # only the two documents holding the words
    for scores in hits.locator(".scores").all_inner_texts():
        assert "found by lexical" in scores and "BM25" in scores and "dense" not in scores
    expect(page.locator("#degraded")).to_be_hidden()  # asked for, not a fault


def test_reranker_down_shows_the_degraded_flag(page: Page, index_dir: Path) -> None:
    with serve(GatewaySettings(index_dir=index_dir), DownReranker()) as url:
        page.goto(url + "/")
        search(page, "capital of France")
        flag = page.locator("#degraded li[data-flag=reranker]")
        expect(flag).to_be_visible()
        expect(flag).to_contain_text("not reranked")
        expect(page.locator("#summary")).to_contain_text("not reranked")
        expect(page.locator("#results > li.hit").first).to_have_attribute("data-id", "paris")
        expect(page.locator("#error")).to_be_hidden()


def test_without_a_key_the_401_message_shows_then_a_key_gives_results(
    page: Page, index_dir: Path
) -> None:
    with serve(GatewaySettings(index_dir=index_dir, api_keys=[API_KEY])) as url:
        page.goto(url + "/")
        expect(page.locator("#collection-info")).to_contain_text("401 unauthorized")
        search(page, "capital of Germany")
        error = page.locator("#error")
        expect(error).to_be_visible()
        expect(error).to_contain_text("401 unauthorized")
        expect(error).to_contain_text("an API key is required")
        expect(page.locator("#answer")).to_be_hidden()

        page.get_by_label("API key").fill("not-the-key")
        search(page, "capital of Germany")
        expect(error).to_contain_text("unknown API key")

        page.get_by_label("API key").fill(API_KEY)
        page.get_by_label("API key").press("Tab")  # a changed key lists the collections again
        expect(page.locator("#collection-info")).to_contain_text("generation 1")
        with page.expect_request("**/v1/search") as sent:
            search(page, "capital of Germany")
        assert sent.value.headers["authorization"] == f"Bearer {API_KEY}"
        expect(error).to_be_hidden()
        expect(page.locator("#results > li.hit").first).to_have_attribute("data-id", "berlin")
        # the key stays in the page: nothing stored by the browser
        stored = page.evaluate(
            "() => [localStorage.length, sessionStorage.length, document.cookie]"
        )
        assert stored == [0, 0, ""]


def test_highlights_land_on_the_words_after_astral_characters(page: Page, gateway: str) -> None:
    page.goto(gateway + "/")
    search(page, "crab mascot")
    first = page.locator("#results > li.hit").first
    expect(first).to_have_attribute("data-id", "crab")
    # code point offsets read as UTF-16 would mark "b is t", "rab i" and the like
    expect(first.locator(".snippet mark")).to_have_text(["crab", "mascot", "crab"])
    expect(first.locator("h2 mark")).to_have_text(["crab"])
    expect(first.locator("h2")).to_have_text("🦀 Ferris the crab")
    expect(first.locator(".snippet")).to_have_text(EXTRA_DOCS[0].text)


def test_markup_in_documents_shows_as_text(page: Page, gateway: str) -> None:
    page.goto(gateway + "/")
    search(page, "markup injection")
    first = page.locator("#results > li.hit").first
    expect(first).to_have_attribute("data-id", "markup")
    expect(first.locator("h2")).to_have_text(EXTRA_DOCS[1].title)
    expect(first.locator(".snippet")).to_have_text(EXTRA_DOCS[1].text)
    expect(first.locator(".snippet mark")).to_have_text(["markup", "injection"])
    assert first.locator("script, img, b, i").count() == 0
    assert page.evaluate("() => window.pwned") is None


def test_pages_follow_next_offset_within_a_generation(page: Page, gateway: str) -> None:
    page.goto(gateway + "/")
    page.get_by_label("Per page").fill("3")
    search(page, "the capital city language")  # the dense list ranks every document
    hits = page.locator("#results > li.hit")
    expect(hits).to_have_count(3)
    first_page = hits.evaluate_all("items => items.map(item => item.dataset.id)")
    expect(page.locator("#previous")).to_be_disabled()

    with page.expect_request("**/v1/search") as sent:
        page.get_by_role("button", name="Next").click()
    body = sent.value.post_data_json
    assert (body["offset"], body["generation"], body["top_k"]) == (3, 1, 3)
    expect(page.locator("#page")).to_have_text("page 2")
    expect(hits.first.locator(".scores")).to_contain_text("#4 ·")
    second_page = hits.evaluate_all("items => items.map(item => item.dataset.id)")
    assert not set(first_page) & set(second_page)  # no repeats

    page.get_by_role("button", name="Previous").click()
    expect(page.locator("#page")).to_have_text("page 1")
    expect(hits.first.locator(".scores")).to_contain_text("#1 ·")
    assert hits.evaluate_all("items => items.map(item => item.dataset.id)") == first_page


def test_a_page_from_a_newer_generation_says_so(
    page: Page, index_dir: Path, tmp_path: Path
) -> None:
    index = tmp_path / "index"
    shutil.copytree(index_dir, index)
    with serve(GatewaySettings(index_dir=index)) as url:
        page.goto(url + "/")
        page.get_by_label("Per page").fill("3")
        search(page, "the capital city language")
        expect(page.locator("#summary")).to_contain_text("generation 1")
        expect(page.locator("#notice")).to_be_hidden()

        madrid = Document("madrid", "Madrid is the capital of Spain.", "Madrid", {"lang": "en"})
        publish(index, "default", [*SMALL_DOCS, *EXTRA_DOCS, madrid])
        httpx.post(url + "/admin/reload", timeout=30).raise_for_status()  # or upkeep did
        listed = httpx.get(url + "/v1/collections", timeout=30).json()["collections"]
        assert listed["default"]["generation"] == 2
        with page.expect_request("**/v1/search") as sent:
            page.get_by_role("button", name="Next").click()
        assert sent.value.post_data_json["generation"] == 1
        expect(page.locator("#notice")).to_have_text(
            "The index changed since the previous page: this page comes from generation 2."
        )
        expect(page.locator("#summary")).to_contain_text("generation 2")


def test_collection_picker_and_filters(page: Page, gateway: str) -> None:
    page.goto(gateway + "/")
    picker = page.get_by_label("Collection")
    expect(picker.locator("option")).to_have_text(["default", "second"])
    picker.select_option("second")
    expect(page.locator("#collection-info")).to_contain_text("model fake:embedder")
    search(page, "tea")
    expect(page.locator("#summary")).to_contain_text("collection second")
    expect(page.locator("#results > li.hit").first).to_have_attribute("data-id", "tea")

    picker.select_option("default")
    filter_box = page.get_by_label("Filter")
    filter_box.fill('{"topic": ["animal", "earth"]}')
    with page.expect_request("**/v1/search") as sent:
        search(page, "capital of Germany")
    assert sent.value.post_data_json["filter"] == {"topic": ["animal", "earth"]}
    ids = page.locator("#results > li.hit").evaluate_all("items => items.map(i => i.dataset.id)")
    assert ids and set(ids) <= {"cats", "crab", "volcano"}, ids

    # the gateway's refusal shows as its message and field
    filter_box.fill('{"topic": {"nested": 1}}')
    search(page, "capital of Germany")
    error = page.locator("#error")
    expect(error).to_contain_text("422 invalid_request")
    expect(error).to_contain_text("(field: filter.topic)")
    # and JSON the page cannot read is refused before it is sent
    filter_box.fill("{topic: animal")
    search(page, "capital of Germany")
    expect(error).to_contain_text("the filter is not JSON")
