"""What a user sees: the MLflow UI (`mlflow ui` on loopback) on the smoke study's store,
opened in a real headless Chromium driven by Selenium through Debian's chromium-driver.
Installs nothing; skips, saying why, where no browser is installed (.ci/run installs
one). Screenshots land in $BERTREP_TEST_ARTIFACTS (default outputs/test-artifacts)/ui."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from bertrep import env, tracking
from bertrep.tracking import server

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip(
        "no headless browser: install Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver) to run the MLflow UI tests",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (only where a browser exists)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as seen  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

SHOTS = Path(os.environ.get("BERTREP_TEST_ARTIFACTS", REPO / "outputs" / "test-artifacts")) / "ui"
WAIT_S = 60  # the UI's first page load compiles nothing, but 2 busy cores are slow


@pytest.fixture(scope="module")
def store(smoke_study) -> dict:
    """The smoke study's experiment, runs and registered models, read with MLflow's client."""
    mlflow.set_tracking_uri(smoke_study["env"][env.MLFLOW_TRACKING_URI])
    found = mlflow.search_runs(search_all_experiments=True, output_format="list")
    kind = {r.info.run_id: r.data.tags.get(tracking.KIND) for r in found}
    # the study's own analysis (other tests add later ones to this store)
    analysis = min((r for r in found if kind[r.info.run_id] == tracking.ANALYSIS_KIND),
                   key=lambda r: r.info.start_time)  # fmt: skip
    return {
        "client": MlflowClient(smoke_study["env"][env.MLFLOW_TRACKING_URI]),
        "uri": smoke_study["env"][env.MLFLOW_TRACKING_URI],
        "tmp": smoke_study["tmp"],
        "runs": found,
        "experiment": analysis.info.experiment_id,
        "analysis": analysis,
    }


@pytest.fixture(scope="module")
def ui(store, tmp_path_factory):
    """`mlflow ui` on loopback against the store; its base URL."""
    port = server.free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("ui") / "ui.log"
    cmd = [str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
           store["uri"], "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=store["tmp"], stdout=out, stderr=subprocess.STDOUT)
    try:
        server.wait_healthy(url, proc, log, timeout_s=120)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1600,1000"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(browser, url: str):
    browser.get(url)
    return WebDriverWait(browser, WAIT_S)


def shot(browser, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SHOTS / f"{name}.png"))


def visible_text(browser, text: str):
    """An element showing exactly `text`."""
    return seen.visibility_of_element_located((By.XPATH, f"//*[normalize-space(text())='{text}']"))


def test_runs_page_nests_each_sweeps_runs_under_its_parent(store, ui, browser):
    wait = open_page(browser, f"{ui}/#/experiments/{store['experiment']}/runs")
    parent = wait.until(seen.element_to_be_clickable((By.LINK_TEXT, "sweep smoke-aufc")))
    parent_id = parent.get_attribute("href").split("/")[-1]
    children = [r for r in store["runs"] if r.data.tags.get(tracking.PARENT_RUN) == parent_id]
    assert len(children) == 29  # the smoke AuFC grid, less the single sweep's four sources
    # no child is listed before its parent is expanded
    child = "pos from sst2, k=3, seed 1"
    assert child in {r.data.tags[tracking.RUN_NAME] for r in children}
    assert not browser.find_elements(By.LINK_TEXT, child)
    row = parent.find_element(By.XPATH, "./ancestor::*[@role='row'][1]")
    row.find_element(By.CSS_SELECTOR, "[col-id='attributes.`Run Name`'] button").click()
    link = wait.until(seen.visibility_of_element_located((By.LINK_TEXT, child)))
    # the child row shows its probe sets in the Dataset column
    child_row = link.find_element(By.XPATH, "./ancestor::*[@role='row'][1]").get_attribute("row-id")
    cells = browser.find_elements(By.CSS_SELECTOR, f"[row-id='{child_row}']")
    assert any("pos-probe" in c.text for c in cells), [c.text for c in cells]
    shot(browser, "runs_nested")


def test_training_run_shows_its_loss_curve(store, ui, browser):
    name = "pos from sst2, k=3, seed 1"
    (run,) = [r for r in store["runs"] if r.data.tags.get(tracking.RUN_NAME) == name]
    assert len(store["client"].get_metric_history(run.info.run_id, tracking.LOSS)) == 40
    page = f"{ui}/#/experiments/{store['experiment']}/runs/{run.info.run_id}/model-metrics"
    wait = open_page(browser, page)
    wait.until(visible_text(browser, name))
    search = wait.until(seen.element_to_be_clickable(
        (By.CSS_SELECTOR, "input[placeholder='Search metric charts']")))  # fmt: skip
    search.send_keys("loss")
    title = wait.until(visible_text(browser, "loss"))  # the chart of train/loss
    chart = title.find_element(By.XPATH, "./ancestor::*[.//*[contains(@class,'plotly')]][1]")
    wait.until(lambda _: chart.find_elements(By.CSS_SELECTOR, ".plotly .scatterlayer .trace"))
    shot(browser, "loss_curve")


def test_analysis_run_shows_a_figure(store, ui, browser):
    run = store["analysis"]
    figures = [f.path for f in store["client"].list_artifacts(run.info.run_id, "figures")]
    figure = next(p for p in figures if p.endswith("mean_cka_biased.png"))
    page = f"{ui}/#/experiments/{store['experiment']}/runs/{run.info.run_id}/artifacts/{figure}"
    wait = open_page(browser, page)
    wait.until(visible_text(browser, figure))
    # the preview is the PNG itself, decoded by the browser (not a broken image)
    width = "return arguments[0].naturalWidth"
    wait.until(
        lambda b: any(b.execute_script(width, i) > 200 for i in b.find_elements(By.TAG_NAME, "img"))
    )
    shot(browser, "analysis_figure")


def test_registered_model_lists_its_versions(store, ui, browser):
    name = tracking.registered_model_name("sst2")
    versions = store["client"].search_model_versions(f"name = '{name}'")
    assert len(versions) >= 2
    wait = open_page(browser, f"{ui}/#/models/{name}")
    for v in versions:
        wait.until(seen.visibility_of_element_located((By.LINK_TEXT, f"Version {v.version}")))
    shot(browser, "registered_model")
