"""`sqlinfer docs generate` and `docs serve` on projects/digits and projects/imagenet_resnet50, checked
in a real headless browser (Chromium from the OS packages, driven by Playwright): the page loads
without console errors, its lineage graph has a box for every source, model function and node of
the project, and clicking a node shows its compiled SQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, SQLINFER, own_database

from sqlinfer import Project

pytestmark = pytest.mark.spark
playwright = pytest.importorskip("playwright.sync_api")  # the test extra installs it
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:  # an OS package, not a pip one: README, Run the tests
    pytest.skip("no Chromium on PATH: apt-get install chromium", allow_module_level=True)


def _expected_boxes(root: Path) -> list[str]:
    """The graph's boxes, from the project itself (not from the page's catalog)."""
    project = Project.load(root)
    return sorted([*(f"source:{s}" for s in project.config.sources), *(f"model:{m.decl.name}" for m in project.models),
                   *(f"node:{n}" for n in project.nodes().load().nodes)])


def _browse(url: str, click: str, screenshot: Path) -> tuple[list[str], str, str, list[str]]:
    """Open ``url``, click the box ``click``: (box ids, details text, SQL shown, console errors)."""
    errors: list[str] = []
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 800})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url)
            page.wait_for_selector(".box")
            boxes = page.eval_on_selector_all(".box", "boxes => boxes.map(b => b.dataset.id)")
            page.click(f'[data-id="{click}"]')
            details = page.inner_text("#details")
            sql = page.inner_text("#details pre.sql")
            page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return sorted(boxes), details, sql, errors


def test_the_digits_docs_site_in_a_browser(spark, digits_copy: Path, tmp_path: Path) -> None:
    database = own_database(digits_copy)
    assert Project.load(digits_copy).build(spark).success
    page = Project.load(digits_copy).docs(spark)
    assert page == digits_copy / "target" / "docs" / "index.html"

    boxes, details, sql, errors = _browse(page.as_uri(), "node:digit_predictions", tmp_path / "digits.png")
    assert errors == []
    assert boxes == _expected_boxes(digits_copy) == [
        "model:digits", "model:digits_scores", "node:accuracy", "node:confusion_matrix",
        "node:digit_predictions", "node:digit_predictions_incremental", "source:digits_images"]
    assert "digits_scores(content) AS scores" in sql
    assert f"`{database}`.`digit_predictions`" in details
    assert "Every digit image with its predicted class and score." in details  # sql/schema.yml
    assert "predicted_index\tint" in details and "rows\t1797" in details  # the table's columns, the last build
    assert "accuracy_at_least(digit_predictions.predicted_index)" in details  # its data tests
    assert (tmp_path / "digits.png").stat().st_size > 10_000

    # The model function's box: its declaration, fingerprint and weights digest.
    model = Project.load(digits_copy).resolve_models()[0]
    with playwright.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        tab = browser.new_page()
        tab.goto(page.as_uri())
        tab.click('[data-id="model:digits"]')
        shown = tab.inner_text("#details")
        browser.close()
    assert model.plan.fingerprint in shown and '"class": "digits_net:DigitsCNN"' in shown
    assert "weights sha256" in shown

    # `docs serve`: the same page over HTTP on loopback.
    served = subprocess.Popen([SQLINFER, "docs", "serve", str(digits_copy), "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        assert served.stdout is not None
        line = served.stdout.readline()
        assert line.startswith("Serving ") and " at http://127.0.0.1:" in line, line
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as response:
            body = response.read().decode()
            assert response.status == 200 and "<title>sqlinfer docs</title>" in body and '"project": "digits"' in body
        boxes, _details, sql, errors = _browse(url, "node:accuracy", tmp_path / "served.png")
        assert errors == [] and boxes == _expected_boxes(digits_copy)
        assert f"FROM `{database}`.`digit_predictions`" in sql
    finally:
        os.killpg(served.pid, signal.SIGTERM)
        served.wait(timeout=30)


def test_the_imagenet_docs_site_in_a_browser(spark, tmp_path: Path) -> None:
    root = tmp_path / "imagenet_resnet50"
    shutil.copytree(REPO / "projects" / "imagenet_resnet50", root, ignore=shutil.ignore_patterns("target"))
    models = root / "models.yml"  # offline: a seeded random init instead of downloading IMAGENET1K_V2
    models.write_text(models.read_text().replace("weights: IMAGENET1K_V2", "weights: random"))
    own_database(root)
    page = Project.load(root).docs(spark)  # not built: the page says so, and shows the rest
    boxes, details, sql, errors = _browse(page.as_uri(), "node:predictions", tmp_path / "imagenet.png")
    assert errors == []
    assert boxes == _expected_boxes(root) and "model:resnet50" in boxes
    assert "resnet50_predict(content)" in sql
    assert "No columns known: not built yet." in details
