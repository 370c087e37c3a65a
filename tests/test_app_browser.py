"""The web app end to end: `fashionrec app` as a real server on loopback, driven by headless chromium.

Uses Debian's chromium (no browser download): `apt-get install -y --no-install-recommends chromium`,
which `make setup` runs when it is missing. Playwright starts it with a fresh temporary profile.
Screenshots are saved under artifacts/ (git-ignored); their paths are printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from fashionrec.build import BuildReport, build_index
from fashionrec.catalog import load_catalog
from fashionrec.encoders import Encoder
from fashionrec.search import Recommender

from conftest import REPO, app_answers, free_port

# Every test here drives chromium (deselected by the fast core, `make test-fast`).
pytestmark = pytest.mark.browser

CHROMIUM = Path(os.environ.get("FASHIONREC_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "artifacts"
RESULT_CAPTION = re.compile(r"Similarity \d\.\d\d · #(\S+)")
TIMEOUT_MS = 60_000
PHONE_WIDTH = 390


@contextmanager
def app_server(index: Path, log_path: Path) -> Iterator[str]:
    """`fashionrec app INDEX --port PORT`, as a user starts it; its URL once it answers."""
    port = free_port()
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "fashionrec.cli", "app", str(index), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the app server did not start:\n{log_path.read_text()}")
            if app_answers(url):
                break
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=20)


@pytest.fixture(scope="module")
def server(built_index: tuple[Path, BuildReport], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with app_server(built_index[0], tmp_path_factory.mktemp("server") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"chromium not found at {CHROMIUM}: the browser test needs Debian's chromium. Install it with "
            "`apt-get update && apt-get install -y --no-install-recommends chromium` (or `make setup`)."
        )
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=path)
    print(f"screenshot: {path}")


def shown_results(page: Page) -> list[str]:
    """Ids of the result cards on screen, once every picture on the page has loaded."""
    page.wait_for_function(
        "() => [...document.querySelectorAll('main img')].every(img => img.complete && img.naturalWidth > 0)"
    )
    return [RESULT_CAPTION.search(text)[1] for text in page.get_by_text(RESULT_CAPTION).all_inner_texts()]


def wait_until_idle(page: Page) -> None:
    """Wait for the app's runs to end: a tap that lands while Streamlit re-renders the page can be lost. Idle
    twice, 0.5 s apart: one run can follow another (the address is written back after a run), and a single
    check between the two let a tap through that was lost (CI, test_a_shared_url_on_a_phone)."""
    running = page.get_by_test_id("stStatusWidgetRunningIcon")
    expect(running).to_have_count(0)
    page.wait_for_timeout(500)
    expect(running).to_have_count(0)


def wait_for_results(page: Page, done: Callable[[list[str]], bool]) -> list[str]:
    """Poll until the rerun has replaced the page's results with ones that satisfy `done`."""
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not done(ids := shown_results(page)):
        assert time.monotonic() < deadline, f"results never changed as expected: {ids}"
        page.wait_for_timeout(200)
    return ids


def test_upload_then_more_like_this(
    server: str, browser: Browser, built_index: tuple[Path, BuildReport], catalog_photo: Path
) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/?details=1")  # ids and scores shown: the test reads the results' ids
    expect(page.get_by_role("heading", name="Find your look-alike")).to_be_visible()
    screenshot(page, "app-start.png")

    page.get_by_test_id("stFileUploaderDropzoneInput").set_input_files(catalog_photo)
    expect(page.get_by_role("heading", name="Your photo")).to_be_visible()
    first = wait_for_results(page, lambda ids: len(ids) == 5)
    assert first[0] == catalog_photo.stem  # the uploaded photo is this catalog product
    assert page.locator("main img").count() == 6  # the query and its 5 results, all loaded
    screenshot(page, "app-upload.png")

    clicked = first[1]
    wait_until_idle(page)
    page.get_by_role("button", name="More like this").nth(1).click()
    name = Recommender.open(built_index[0]).item(clicked).metadata["productDisplayName"]
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    second = wait_for_results(page, lambda ids: len(ids) == 5 and ids != first and clicked not in ids)
    assert set(second) != set(first)
    screenshot(page, "app-more-like-this.png")

    page.get_by_role("button", name="Back").click()
    wait_for_results(page, lambda ids: ids == first)


def test_explore_map_opens_a_product(server: str, browser: Browser) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/?details=1")
    page.get_by_role("link", name="Explore the catalog").click()
    expect(page.locator(".js-plotly-plot")).to_have_count(3)  # types, colours, the embedding map
    chart = page.locator(".js-plotly-plot").nth(2)
    chart.scroll_into_view_if_needed()
    # Where plotly drew the product farthest from any other (so a click there selects it and no
    # overlapping neighbour); AppTest cannot click charts.
    x, y, _ = chart.evaluate(
        """chart => { const layout = chart._fullLayout, trace = chart._fullData[0];
        const px = Array.from(trace.x, (v, i) => [layout.xaxis.l2p(v) + layout._size.l,
                                                  layout.yaxis.l2p(trace.y[i]) + layout._size.t]);
        let best = 0, bestGap = -1;
        px.forEach((p, i) => {
            let gap = Infinity;
            px.forEach((q, j) => { if (i !== j) gap = Math.min(gap, Math.hypot(p[0] - q[0], p[1] - q[1])); });
            if (gap > bestGap) { bestGap = gap; best = i; }
        });
        return [px[best][0], px[best][1], trace.customdata[best][0]]; }"""
    )
    box = chart.bounding_box()
    page.mouse.click(box["x"] + x, box["y"] + y)
    page.get_by_role("button", name="More like this").wait_for()
    screenshot(page, "app-explore-map.png")

    wait_until_idle(page)
    page.get_by_role("button", name="More like this").click()
    expect(page.get_by_role("heading", name="Similar products")).to_be_visible()
    # The product searched is in the address (the shared-URL state); a dot drawn over another can take the
    # click, so it is read back rather than assumed.
    page.wait_for_url(re.compile(r"[?&]item=[^&]+"))
    opened = re.search(r"[?&]item=([^&]+)", page.url).group(1)
    assert opened not in wait_for_results(page, lambda ids: len(ids) == 5)
    expect(page.get_by_text(f"#{opened}", exact=True)).to_be_visible()  # the query's id badge


def test_a_shared_url_on_a_phone(server: str, browser: Browser, built_index: tuple[Path, BuildReport]) -> None:
    """A link opened on a 390 px wide phone: the shared query comes back, and the page fits the screen."""
    recommender = Recommender.open(built_index[0])
    item = recommender.items[0].id
    page = browser.new_page(viewport={"width": PHONE_WIDTH, "height": 844}, is_mobile=True, has_touch=True)
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(f"{server}/?item={item}&k=3&colour=0.2&details=1")
    name = recommender.item(item).metadata["productDisplayName"]
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    ids = wait_for_results(page, lambda ids: len(ids) == 3)
    assert ids == [m.id for m in recommender.similar_to_item(item, 3, colour_weight=0.2)]
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE_WIDTH  # no sideways scrolling
    for element in (*page.locator("main img").all(), *page.get_by_role("button", name="More like this").all()):
        box = element.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE_WIDTH, box
    screenshot(page, "app-phone.png")
    wait_until_idle(page)
    page.get_by_role("button", name="More like this").first.tap()  # the address follows the new query
    page.wait_for_url(re.compile(rf"item={re.escape(ids[0])}"))


def test_a_product_s_matched_photo_is_shown_with_its_number(
    browser: Browser, sample_catalog: Path, encoder: Encoder, tmp_path: Path
) -> None:
    """A catalog with two photos per product (the second, another product's shot): each result shows the photo
    that matched and says which of its photos it is."""
    shots = sorted((sample_catalog / "images").glob("*.jpg"))[:12]
    table = tmp_path / "shop.csv"
    rows = [f"{shot.stem},images/{shot.name},images/{shots[n + 6].name}" for n, shot in enumerate(shots[:6])]
    table.write_text("\n".join(["id,image,image2", *rows]) + "\n")
    (tmp_path / "images").mkdir()
    for shot in shots:
        (tmp_path / "images" / shot.name).write_bytes(shot.read_bytes())
    build_index(load_catalog(table, image_column="image,image2"), tmp_path / "idx", encoder, workers=0, progress=False)
    item = shots[0].stem
    expected = Recommender.open(tmp_path / "idx").similar_to_item(item, 3)
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    with app_server(tmp_path / "idx", tmp_path / "app.log") as url:
        page.goto(f"{url}/?item={item}&k=3&details=1")
        assert wait_for_results(page, lambda ids: len(ids) == 3) == [m.id for m in expected]
        captions = page.get_by_text(re.compile(r"photo \d of 2")).all_inner_texts()
        assert [re.search(r"photo \d of 2", text)[0] for text in captions] == [
            f"photo {m.photo + 1} of 2" for m in expected
        ]
        screenshot(page, "app-photos.png")
