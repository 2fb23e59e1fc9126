"""`zoo ui` in a real headless Chromium: a finished sweep's runs link opens on its trained
models, flat, best first, names whole, with axis and headline-metric columns; its charts
link on the headline's chart; its compare link on parallel coordinates over the axes and
the headline; a run page shows its figures.

Debian's chromium and chromium-driver are installed with apt when missing; the
screenshots are saved under the test's tmp folder (paths printed) and, with
``ZOO_SCREENSHOTS=DIR``, copied to DIR (the README's come from docs/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import zoo_process
from PIL import Image

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
UI_PORT, DRIVER_PORT = 15702, 15703
# where screenshots are copied: read once, relative to where pytest starts (tests chdir)
SCREENSHOTS = (
    os.path.abspath(os.environ["ZOO_SCREENSHOTS"]) if "ZOO_SCREENSHOTS" in os.environ else ""
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1700,800",
]


def _install_chromium() -> None:
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return
    apt = ["sudo", "-n", "apt-get"] if os.geteuid() != 0 else ["apt-get"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([*apt, "update"], check=True, env=env)
    subprocess.run([*apt, "install", "-y", "chromium", "chromium-driver"], check=True, env=env)


@pytest.fixture(scope="module")
def ui(trained_tiny):
    """`zoo ui` on the trained tiny sweep, once it answers: (base URL, {experiment:
    {"runs" | "charts" | "compare": link}})."""
    server = zoo_process(
        trained_tiny.root, "ui", "--port", str(UI_PORT), text=True, start_new_session=True
    )
    try:
        base, links = f"http://127.0.0.1:{UI_PORT}", {}
        assert base in server.stdout.readline()
        deadline = time.time() + 180
        while "server answers" not in (line := server.stdout.readline()):
            assert line and "no experiment links" not in line, line
            assert time.time() < deadline, "the server zoo ui started does not answer"
            if "#/experiments/" in line and not line.strip().startswith("all experiments"):
                label, link = line.strip().split(": ", 1)
                name, what = label.rsplit(" ", 1)
                links.setdefault(name, {})[what] = link
        yield base, links
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


@pytest.fixture
def browser(tmp_path):
    _install_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), port=DRIVER_PORT), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait_for_text(driver, texts: list[str], timeout: float = 60) -> str:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while True:
        body = driver.find_element(By.TAG_NAME, "body").text
        if all(t in body for t in texts) or time.time() > deadline:
            return body
        time.sleep(0.5)


def _close_assistant(driver) -> None:
    """Close MLflow's assistant side panel, if shown, so the screenshot shows the runs."""
    from selenium.webdriver.common.by import By

    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()
            time.sleep(0.5)
            return


def _shown_whole(driver, element) -> bool:
    """Whether ``element``'s text ends inside the table cell that shows it (not cut off)."""
    return driver.execute_script(
        "const el = arguments[0], cell = el.closest('.ag-cell') || el.parentElement;"
        "const text = document.createRange(); text.selectNodeContents(el);"
        "return text.getBoundingClientRect().right <= cell.getBoundingClientRect().right;",
        element,
    )


def _charts_in_order(driver, texts: list[str]) -> str:
    """The chart view's text from its first chart card on, once it shows ``texts``."""
    body = _wait_for_text(driver, ["Add chart", *texts])
    return body[body.index("Add chart") + len("Add chart") :].lstrip()


def _screenshot(driver, path: Path) -> None:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    if SCREENSHOTS:
        folder = Path(SCREENSHOTS)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)


@pytest.mark.slow
def test_sweep_opens_on_its_models_and_a_run_shows_its_figures(ui, browser, trained, tmp_path):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    base, links = ui
    client = MlflowClient(trained.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    best_first = client.search_runs(
        [experiment.experiment_id],
        "tags.`zoo.kind` = 'run'",
        order_by=["metrics.`target_loss_adj` ASC"],
    )
    models = [run.info.run_name for run in best_first]
    assert sorted(models) == ["frozen encoder · source a · seed 0", "no freeze · source a · seed 0"]
    browser.get(links["tiny"]["runs"])
    description = "tiny sweep for the model zoo tests"  # the spec's, shown as its note
    expected = [*models, "target_loss_adj", "zoo.axis.freeze", "zoo.axis.source", description]
    body = _wait_for_text(browser, expected)  # the page fills in over several requests
    assert "/runs" in browser.current_url and "Observability" not in body  # not GenAI's view
    for text in expected:
        assert text in body, text
    # flat (the models are children of the shared stage's run) and best first
    assert "pretrain ·" not in body and body.index(models[0]) < body.index(models[1])
    for name in models:  # each name whole, not cut by its column
        assert _shown_whole(browser, browser.find_element(By.LINK_TEXT, name)), name
    _close_assistant(browser)
    _screenshot(browser, tmp_path / "ui-runs.png")

    (run,) = [r for r in best_first if r.data.tags["zoo.axis.freeze"] == "encoder"]
    browser.get(
        f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        "/artifacts/figures/predictions.png?workflowType=machine_learning"
    )
    name = run.info.run_name
    body = _wait_for_text(browser, [name, "loss_curves.png", "predictions.png"])
    assert name in body and "loss_curves.png" in body
    figure = client.download_artifacts(run.info.run_id, "figures/predictions.png", str(tmp_path))
    with Image.open(figure) as image:
        width = image.width
    deadline = time.time() + 60
    while True:  # the UI shows the figure it fetched as a blob: image of the file's width
        shown = [
            image
            for image in browser.find_elements(By.TAG_NAME, "img")
            if image.is_displayed() and int(image.get_attribute("naturalWidth") or 0) == width
        ]
        if shown or time.time() > deadline:
            break
        time.sleep(0.5)
    assert shown, "the run page shows no predictions.png figure"
    _close_assistant(browser)
    _screenshot(browser, tmp_path / "ui-run.png")


@pytest.mark.slow
def test_charts_open_on_the_headline_and_compare_shows_parallel_coordinates(ui, browser, tmp_path):
    from selenium.webdriver.common.by import By

    _, links = ui
    browser.set_window_size(1700, 1000)
    browser.get(links["tiny"]["charts"])
    charts = _charts_in_order(browser, ["Parallel Coordinates", "target_loss_adj"])
    assert charts.startswith("target_loss_adj"), charts[:200]  # the headline's chart first
    _close_assistant(browser)
    _screenshot(browser, tmp_path / "ui-charts.png")

    browser.get(links["tiny"]["compare"])
    charts = _charts_in_order(browser, ["Parallel Coordinates", "stages.1.freeze"])
    assert charts.startswith("Parallel Coordinates"), charts[:200]
    parallel = charts[: charts.index("target_loss_adj") + len("target_loss_adj")]
    assert "stages.1.freeze" in parallel  # the freeze axis, with the headline beside it
    assert browser.find_elements(By.CSS_SELECTOR, "svg path"), "no parallel coordinates drawn"
    _close_assistant(browser)
    _screenshot(browser, tmp_path / "ui-compare.png")


@pytest.mark.slow
def test_an_experiment_opened_from_mlflows_list_is_a_training_experiment(ui, browser, trained):
    """A browser that never chose a workflow, opening the sweep the usual way (the home
    page, then the experiment, no workflowType in its URL), sees its runs in the training
    workflow, not GenAI's traces; MLflow alone opened it in GenAI mode."""
    from mlflow.tracking import MlflowClient

    base, _ = ui
    experiment = MlflowClient(trained.tracking_uri).get_experiment_by_name("tiny")
    browser.get(base)
    _wait_for_text(browser, ["tiny"])
    stored = browser.execute_script("return localStorage.getItem('mlflow.workflowType_v1')")
    assert stored == '"machine_learning"'
    browser.get(f"{base}/#/experiments/{experiment.experiment_id}")
    body = _wait_for_text(browser, ["pretrain · source a · seed 0"])  # its runs, folded
    assert "pretrain · source a · seed 0" in body and "Observability" not in body
