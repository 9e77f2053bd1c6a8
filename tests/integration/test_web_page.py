"""The web page in a real browser (Debian's chromium driven by Playwright) against a real `ebmm serve`
with the shipped checkpoints and API keys on: write the built-in samples through the page, occlude a
query with a random block, retrieve, and check the restored image's pixels against the stored one.
Also: /docs and /redoc render with every request that leaves the machine blocked."""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
KEY = "web-page-key-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

# the page's pixels, read back in the browser: the restored image, the stored original and the query,
# thresholded at 0.5, and the counts of pixels that differ from the original
COMPARE = """() => {
  const grab = (img) => { const c = document.createElement('canvas'); c.width = 32; c.height = 32;
    const x = c.getContext('2d'); x.drawImage(img, 0, 0, 32, 32); return x.getImageData(0, 0, 32, 32).data; };
  const out = grab(document.getElementById('result-img')), orig = grab(document.getElementById('original-img'));
  const q = document.getElementById('query-canvas').getContext('2d').getImageData(0, 0, 32, 32).data;
  let restored = 0, query = 0;
  for (let i = 0; i < out.length; i += 4) {
    const o = orig[i] >= 128; restored += (out[i] >= 128) !== o; query += (q[i] >= 128) !== o;
  }
  return {restored, query};
}"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: `make test` installs Debian's chromium (scripts/install_browser.sh)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def server(server_factory: Callable, redis_url: str, module_prefix: str) -> Any:
    if not (REPO / "checkpoints" / "characters32" / "card.json").exists():
        pytest.skip("no shipped characters32 checkpoint")
    return server_factory(store_url=redis_url, store_prefix=module_prefix, checkpoint_dir=REPO / "checkpoints",
                          api_keys=KEY)


def offline_page(browser: Any) -> tuple[Any, list[str]]:
    """A page whose requests to anything but loopback are aborted (and recorded)."""
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    blocked: list[str] = []

    def route(r: Any) -> None:
        url = r.request.url
        if url.startswith(("http://127.0.0.1", "data:", "blob:")):
            r.continue_()
        else:
            blocked.append(url)
            r.abort()
    page.route("**/*", route)
    return page, blocked


def test_write_occlude_retrieve_through_the_page(browser: Any, server: Any) -> None:
    page, blocked = offline_page(browser)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    # keys are on: without one the page shows the API's 401 problem, with one it lists the models
    page.wait_for_selector("#error:not([hidden])")
    assert "401" in page.inner_text("#error") and "API key" in page.inner_text("#error")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.select_option("#model", "characters32")
    page.click("#sample-btn")
    page.wait_for_function("document.querySelectorAll('#tray img').length === 16")
    page.click("#write-btn")
    page.wait_for_function("document.getElementById('session-info').dataset.sessionId")
    assert "holds 16 patterns" in page.inner_text("#session-info")
    page.click("#tray img[data-index='3']")
    page.click("#block-btn")
    page.click("#retrieve-btn")
    page.wait_for_function("document.getElementById('result-img').complete && "
                           "document.getElementById('result-img').naturalWidth === 32")
    page.wait_for_function("document.getElementById('traj-label').textContent.startsWith('step 5')")
    diff = page.evaluate(COMPARE)
    assert diff["query"] >= 40, diff                      # the block really damaged the query
    assert diff["restored"] <= diff["query"] // 4, diff   # and the memory restored most of it
    assert "familiarity" in page.inner_text("#familiarity")
    assert page.get_attribute("#download", "href").startswith("data:image/png;base64,")
    out = REPO / "results" / "web"
    out.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out / "page.png"), full_page=True)
    assert not errors, errors
    assert not blocked, blocked
    page.close()


def test_an_api_error_is_shown_on_the_page(browser: Any, server: Any) -> None:
    page, _ = offline_page(browser)
    page.goto(server.url + "/")
    page.fill("#api-key", KEY)
    page.dispatch_event("#api-key", "change")
    page.wait_for_function("document.querySelectorAll('#model option').length > 0")
    page.click("#retrieve-btn")                                    # nothing written yet
    page.wait_for_selector("#error:not([hidden])")
    assert "write a session first" in page.inner_text("#error")
    page.close()


@pytest.mark.parametrize("path, selector", [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")])
def test_api_docs_render_with_the_network_cut(browser: Any, server: Any, path: str, selector: str) -> None:
    page, blocked = offline_page(browser)
    page.goto(server.url + path)
    page.wait_for_selector(selector, timeout=30_000)
    assert "ebmm memory service" in page.inner_text(selector)
    page.wait_for_function("document.body.innerText.includes('/v1/sessions/{session_id}/retrieve')",
                           timeout=30_000)                           # the operations rendered too
    # ReDoc's bundle asks for one decorative logo from its CDN and hides it when that fails
    assert [u for u in blocked if u != "https://cdn.redoc.ly/redoc/logo-mini.svg"] == [], blocked
    page.close()
