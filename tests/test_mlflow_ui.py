"""The MLflow UI in a real browser: what a user sees after `make ui`, in headless Chromium.

Starts the server exactly as `make ui` does (`python -m pipeline ui`) on the tiny project's
store, then clicks through the UI the way a user would: the experiment named after the
dataset, every design's run with its test accuracy, one run's figures among its artifacts.
Full-page screenshots go to tests/artifacts/ (CI keeps them).

Needs Debian's `chromium` (`make browser-deps` installs it; `make test` does so itself).
Without it the test fails and says so; `PIPELINE_SKIP_BROWSER=1` skips it instead.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from pipeline.tracking.server import free_port
from tests.conftest import REPO, TINY_PROJECT_MODELS, tool_env

pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.environ.get("PIPELINE_SKIP_BROWSER") == "1", reason="PIPELINE_SKIP_BROWSER=1"),
]

CHROMIUM = Path(os.environ.get("PIPELINE_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = REPO / "tests" / "artifacts"
DATASET = "mnist"
FIGURES = (
    "confusion.png",
    "confusion_normalized.png",
    "feature_maps.png",
    "filters.png",
    "learning_curves.png",
    "mistakes.png",
    "reliability.png",
    "samples.png",
)
SERVER_START_TIMEOUT = 180  # seconds; the server imports MLflow, slow on a busy 2-core machine
UI_TIMEOUT_MS = 60_000  # per UI step: the React app fetches, then renders
VIEWPORT = {"width": 1920, "height": 1080}


# ---- the server, started as `make ui` starts it ---------------------------------------------


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def stop(server: subprocess.Popen) -> None:
    """Stop the server and every process it started (uvicorn's workers): its whole process group."""
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            break  # the group is gone
        try:
            server.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(0.5)  # give the workers the same signal's time to exit, then sweep what is left


@pytest.fixture(scope="module")
def ui_url(tiny_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python -m pipeline ui` (what `make ui` runs) serving the tiny project's store, on a free port."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path_factory.mktemp("mlflow-ui") / "server.log"
    command = [sys.executable, "-m", "pipeline", "ui", "--root", str(tiny_project), "--port", str(port)]
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            command, cwd=REPO, env=tool_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )  # its own process group, so stop() reaches the workers
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while not answers(f"{url}/health"):
            if server.poll() is not None or time.monotonic() > deadline:
                state = (
                    f"exited with {server.returncode}"
                    if server.poll() is not None
                    else f"did not answer within {SERVER_START_TIMEOUT}s"
                )
                pytest.fail(
                    f"the MLflow UI ({' '.join(command)}) {state}; its output:\n{log_path.read_text(errors='replace')}"
                )
            time.sleep(0.5)
        yield url
    finally:
        stop(server)


# ---- the browser ----------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)  # autouse: checked first, before the project is built
def browser() -> Iterator[object]:
    if not CHROMIUM.is_file():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run `make browser-deps` (as root: installs Debian's chromium "
            "and chromium-driver), or set PIPELINE_SKIP_BROWSER=1 to skip the browser tests",
            pytrace=False,
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the `playwright` package is missing: run `make setup` (it installs requirements.lock)", pytrace=False
        )
    with sync_playwright() as playwright:
        # Debian's Chromium, not a Playwright download (its CDN is out of reach in CI).
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, ui_url: str):
    from playwright.sync_api import expect

    context = browser.new_context(viewport=VIEWPORT, base_url=ui_url)
    context.set_default_timeout(UI_TIMEOUT_MS)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    finally:
        context.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"mlflow_ui_{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def open_experiment(page, dataset: str = DATASET) -> None:
    """Home page → "Model training" → the dataset's experiment: its runs table."""
    from playwright.sync_api import expect

    page.goto("/")
    # MLflow 3 opens in its GenAI view; this project's runs live under "Model training".
    page.get_by_text("Model training", exact=True).click()
    page.get_by_role("link", name=dataset, exact=True).first.click()
    expect(page.get_by_test_id("search-box")).to_be_visible()
    close_assistant = page.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close_assistant.is_visible():  # the chat side panel takes a third of the screen
        close_assistant.click()


class Run(NamedTuple):
    run_id: str
    test_accuracy: float
    artifacts: Path  # where the run's artifacts are on disk


def workspace_runs(project: Path) -> dict[str, list[Run]]:
    """design -> its runs in the workspace (not in experiments), read from the store itself."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(DATASET)
    assert experiment is not None, f"no MLflow experiment named {DATASET!r} in {project / 'mlflow.db'}"
    found = {}
    for design in TINY_PROJECT_MODELS:
        runs = client.search_runs(
            [experiment.experiment_id], f"tags.model = '{design}' and tags.dvc_experiment = 'workspace'"
        )
        assert runs, f"no workspace run of {design} in the store"
        found[design] = [
            Run(
                run.info.run_id,
                run.data.metrics["test_accuracy"],
                Path(urllib.request.url2pathname(urllib.parse.urlparse(run.info.artifact_uri).path)),
            )
            for run in runs
        ]
    return found


def shown_number_matches(text: str, value: float) -> bool:
    """True when `text` is `value` as displayed: equal up to the digits the UI chose to show."""
    text = text.strip()
    decimals = len(text.split(".")[1]) if "." in text else 0
    return math.isclose(float(text), value, abs_tol=0.5 * 10**-decimals + 1e-12)


# ---- the tests ------------------------------------------------------------------------------


def test_experiment_lists_every_design_with_its_test_accuracy(page, tiny_project: Path) -> None:
    from playwright.sync_api import expect

    expected = workspace_runs(tiny_project)
    open_experiment(page)

    # Only the workspace's runs (other tests may add experiments' runs to the same store).
    search = page.get_by_test_id("search-box")
    search.fill("tags.dvc_experiment = 'workspace'")
    search.press("Enter")
    page.wait_for_url(re.compile(r"searchFilter=tags\.dvc_experiment"))
    # The column list is made from the runs loaded: wait for them, or on a loaded machine (test files
    # side by side) the list can open before they arrive, without their metrics.
    for runs in expected.values():
        for run in runs:
            expect(page.locator(f"[row-id='{run.run_id}']").first).to_be_visible()
    # Add the test accuracy column, as a user does: Columns → search → tick it.
    page.get_by_test_id("column-selection-dropdown").first.click()
    page.get_by_placeholder("Search columns").fill("test_accuracy")
    page.get_by_role("dialog").locator("[class*=tree-title]").filter(has_text=re.compile(r"^test_accuracy$")).click()
    page.keyboard.press("Escape")
    expect(page.get_by_test_id("sort-header-test_accuracy")).to_be_visible()

    # Best first: sort by it (a click on the column's header; a second one flips the order).
    header = page.get_by_test_id("sort-header-test_accuracy")
    header.click()
    page.wait_for_url(re.compile(r"orderByKey=metrics.*test_accuracy"))
    if "orderByAsc=true" in page.url:
        header.click()
        page.wait_for_url(re.compile(r"orderByAsc=false"))

    # The URL changes before the table re-renders: wait until a best run is on top (designs
    # may tie: on the tiny data several reach 1.0).
    best = max(run.test_accuracy for runs in expected.values() for run in runs)
    best_designs = sorted(design for design, runs in expected.items() if any(r.test_accuracy == best for r in runs))
    expect(
        page.locator("[row-index='0']").get_by_role(
            "link", name=re.compile("^(" + "|".join(map(re.escape, best_designs)) + ")$")
        )
    ).to_be_visible()

    shown_order = []  # (row position, accuracy) of every design's run
    for design, runs in expected.items():
        for run_id, accuracy, _ in runs:
            row = page.locator(f"[row-id='{run_id}']")
            expect(row.get_by_role("link", name=design, exact=True)).to_be_visible()
            cell = row.locator("[col-id='metrics.`test_accuracy`']")
            expect(cell).to_have_text(re.compile(r"^\s*\d"))
            shown = cell.inner_text()
            assert shown_number_matches(shown, accuracy), (
                f"{design}: the UI shows test_accuracy {shown!r}, the store holds {accuracy}"
            )
            shown_order.append((int(row.first.get_attribute("row-index")), accuracy))
    accuracies = [accuracy for _, accuracy in sorted(shown_order)]
    assert accuracies == sorted(accuracies, reverse=True), f"not ranked by test accuracy: {sorted(shown_order)}"
    screenshot(page, f"{DATASET}_runs_by_test_accuracy")


def test_run_shows_its_figures_among_the_artifacts(page, tiny_project: Path) -> None:
    from PIL import Image
    from playwright.sync_api import TimeoutError, expect

    design = TINY_PROJECT_MODELS[0]
    run = workspace_runs(tiny_project)[design][0]
    open_experiment(page)
    page.locator(f"[row-id='{run.run_id}']").get_by_role("link", name=design, exact=True).click()
    expect(page.get_by_role("heading", name=design)).to_be_visible()
    page.get_by_role("tab", name="Artifacts").click()

    # Every artifact the run carries is listed, the evaluate figures among them.
    carried = sorted(str(path.relative_to(run.artifacts)) for path in run.artifacts.rglob("*") if path.is_file())
    assert {f"figures/{figure}" for figure in FIGURES} <= set(carried), carried
    nodes = page.get_by_test_id("artifact-tree-node")
    for folder in sorted({name.split("/")[0] for name in carried if "/" in name}):
        nodes.filter(has_text=re.compile(rf"^{re.escape(folder)}$")).click()
    for name in carried:
        expect(nodes.filter(has_text=re.compile(rf"^{re.escape(name.split('/')[-1])}$")).first).to_be_visible()

    for figure in ("learning_curves.png", "confusion.png"):
        nodes.filter(has_text=re.compile(rf"^{re.escape(figure)}$")).click()
        expect(page.get_by_text(f"figures/{figure}", exact=True)).to_be_visible()  # the preview's title
        # The preview really is the image: loaded, at the logged PNG's own size.
        with Image.open(run.artifacts / "figures" / figure) as image:
            size = list(image.size)
        try:
            page.wait_for_function(
                """([width, height]) => [...document.querySelectorAll("img[src^='blob:']")]
                .some(img => img.complete && img.naturalWidth === width && img.naturalHeight === height)""",
                arg=size,
            )
        except TimeoutError as error:
            shown = page.locator("img[src^='blob:']").evaluate_all(
                "imgs => imgs.map(img => [img.naturalWidth, img.naturalHeight])"
            )
            raise AssertionError(f"no preview of {figure} ({size[0]}x{size[1]}); previews shown: {shown}") from error
        screenshot(page, f"{DATASET}_{design}_artifact_{figure.removesuffix('.png')}")
