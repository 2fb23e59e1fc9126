"""`zoo ui` in a real headless Chromium: a finished sweep opens on its trained models, by
readable name, with axis and headline-metric columns, and a run page shows its figures.

Debian's chromium and chromium-driver are installed with apt when missing; the
screenshots are saved under the test's tmp folder (paths printed) and, with
``ZOO_SCREENSHOTS=DIR``, copied to DIR (the README's come from docs/).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import zoo_process
from PIL import Image

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
UI_PORT, DRIVER_PORT = 15702, 15703
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


@pytest.fixture
def ui(trained):
    """`zoo ui` on the trained tiny sweep: (base URL, {experiment: models link})."""
    server = zoo_process(
        trained.root, "ui", "--port", str(UI_PORT), text=True, start_new_session=True
    )
    try:
        base = f"http://127.0.0.1:{UI_PORT}"
        assert base in server.stdout.readline()
        deadline = time.time() + 180
        while "#/experiments/" not in (line := server.stdout.readline()):  # once it answers
            assert line and "no experiment links" not in line, line
            assert time.time() < deadline, "zoo ui printed no experiment link"
        name, link = line.strip().split(": ", 1)
        # keep reading the server's log, so a full pipe never blocks it
        threading.Thread(target=server.stdout.read, daemon=True).start()
        yield base, {name: link}
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


def _screenshot(driver, path: Path) -> None:
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    if os.environ.get("ZOO_SCREENSHOTS"):
        folder = Path(os.environ["ZOO_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, folder / path.name)


@pytest.mark.slow
def test_sweep_opens_on_its_models_and_a_run_shows_its_figures(ui, browser, trained, tmp_path):
    from mlflow.tracking import MlflowClient
    from selenium.webdriver.common.by import By

    base, links = ui
    models = ["no freeze · source a · seed 0", "frozen encoder · source a · seed 0"]
    browser.get(links["tiny"])
    description = "tiny sweep for the model zoo tests"  # the spec's, shown as its note
    expected = [*models, "target_loss_adj", "zoo.axis.freeze", "zoo.axis.source", description]
    body = _wait_for_text(browser, expected)  # the page fills in over several requests
    assert "/runs" in browser.current_url and "Model training" in body
    for text in expected:
        assert text in body, text
    assert "pretrain ·" not in body  # shared stages are not models
    _close_assistant(browser)
    _screenshot(browser, tmp_path / "ui-models.png")

    client = MlflowClient(trained.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    (run,) = client.search_runs(
        [experiment.experiment_id], "tags.`zoo.axis.freeze` = 'encoder' and tags.`zoo.kind` = 'run'"
    )
    browser.get(
        f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}"
        "/artifacts/figures/predictions.png?workflowType=machine_learning"
    )
    body = _wait_for_text(browser, [models[1], "loss_curves.png", "predictions.png"])
    assert models[1] in body and "loss_curves.png" in body
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
