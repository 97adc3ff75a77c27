"""The dashboard in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium; .ci/run installs them), against a real
daemon with live jobs (issue 22): each page loads, a job's row changes
state without a reload, the loss curve's points are read from the SVG, the
pipeline graph has its edges, an injected <script> is text and never runs,
and `ftctl dashboard --serve` off loopback asks for its token. One browser
for the module; a screenshot of each page under the test's tmp folder
($FTCTL_SCREENSHOTS, when set, gets a copy: how README's picture is made)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Daemon, ftctl_env, submit_jobs, wait_until, write_config

CHROMIUM, DRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
# one worker takes the module (--dist loadgroup): one browser, one daemon
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dashboard_browser"),
              pytest.mark.skipif(not (CHROMIUM.exists() and DRIVER.exists()),
                                 reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
                                        "chromium-driver; .ci/run installs them)")]
SCRIPT = "<script>document.title='PWNED';window.pwned=1</script>"
TOKEN = "fake-token-FOR-TESTS-5555512345"
DASHBOARD = '\n[dashboard]\nlisten = "127.0.0.1:0"\n'
EXTRA = '\n[logs]\ninterval = "0.5s"\n'


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,900",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(DRIVER)), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A daemon with live jobs: up -> down (a pipeline) and solo, one slot
    at a time, each training for seconds; a provider message and a job's
    history hold a <script>."""
    root = tmp_path_factory.mktemp("site")
    config = write_config(root, agents=("solo", "up", "down"), concurrency=1, queue_time="0.5s",
                          validate_time="0.5s", train_time="3s", poll="0.3s",
                          extra='depends_on = ["up"]\n' + EXTRA + DASHBOARD)
    submit_jobs(config)
    with sqlite3.connect(root / "ftctl.db") as db:
        db.execute("UPDATE job_events SET reason = ? WHERE job_id = 1", (SCRIPT,))
        db.execute("INSERT INTO provider_state (name, paused_why, paused_message) VALUES ('ghost', 'quota', ?)",
                   (SCRIPT,))
    daemon = Daemon(config)
    assert daemon.wait_for("dashboard serving"), daemon.stderr[-2000:]
    url = next(line["url"] for line in daemon.lines if line.get("event") == "dashboard serving")
    yield config, url, daemon
    daemon.kill()


def shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"dashboard-{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    if os.environ.get("FTCTL_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["FTCTL_SCREENSHOTS"]) / path.name)
    return path


def db_state(config: Path, job_id: int) -> str:
    with sqlite3.connect(config.parent / "ftctl.db") as db:
        return db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]


def test_a_job_row_changes_state_without_a_reload(browser, site, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    config, url, _ = site
    browser.get(url)
    assert browser.find_element(By.TAG_NAME, "h1").text == "Jobs"
    WebDriverWait(browser, 15).until(lambda d: d.execute_script("return document.body.dataset.live") == "1")
    browser.execute_script("window.sameDocument = 42")
    row = browser.find_element(By.ID, "job-3")  # down: waits for up, then trains
    before = row.get_attribute("data-state")
    assert before in ("prepared", "queued", "running")
    WebDriverWait(browser, 60).until(
        lambda d: d.find_element(By.ID, "job-3").get_attribute("data-state") != before)
    assert browser.execute_script("return window.sameDocument") == 42  # no reload: the events stream did it
    after = browser.find_element(By.ID, "job-3")
    assert after.find_element(By.CSS_SELECTOR, ".state").text == after.get_attribute("data-state")
    shot(browser, tmp_path, "jobs")


def test_the_loss_curve_is_the_trainers_points(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    config, url, _ = site
    db = config.parent / "ftctl.db"

    def stored() -> list[tuple[int, float]]:
        import json

        with sqlite3.connect(db) as c:
            rows = c.execute("SELECT step, metrics FROM log_points WHERE job_id = 1 AND step IS NOT NULL").fetchall()
        return sorted((s, json.loads(m)["train_loss"]) for s, m in rows if m and "train_loss" in json.loads(m))

    assert wait_until(lambda: db_state(config, 1) == "succeeded" and len(stored()) == 10, timeout=60), stored()
    browser.get(f"{url}jobs/1")
    line = browser.find_element(By.CSS_SELECTOR, 'polyline[data-series="train_loss"]')
    drawn = [tuple(map(float, p.split(":"))) for p in line.get_attribute("data-points").split()]
    assert drawn == [(float(s), pytest.approx(v, rel=1e-5)) for s, v in stored()]
    coords = [tuple(map(float, p.split(","))) for p in line.get_attribute("points").split()]
    assert len(coords) == len(drawn)
    assert [x for x, _ in coords] == sorted(x for x, _ in coords)  # steps left to right
    # SVG's y grows downwards: the lower the loss, the larger the y
    assert sorted(range(len(drawn)), key=lambda i: drawn[i][1]) == \
        sorted(range(len(coords)), key=lambda i: -coords[i][1])
    assert browser.find_elements(By.CSS_SELECTOR, "line.checkpoint")
    shot(browser, tmp_path, "job")


def test_the_pipeline_graph_has_its_edges_coloured_by_state(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    from ftctl.controller.service.dashboard.html import STATE_COLOURS

    _, url, _ = site
    browser.get(f"{url}pipelines")
    edges = {(e.get_attribute("data-from"), e.get_attribute("data-to"))
             for e in browser.find_elements(By.CSS_SELECTOR, "#pipeline line.edge")}
    assert edges == {("up", "down")}
    nodes = {n.get_attribute("data-agent"): n for n in browser.find_elements(By.CSS_SELECTOR, "#pipeline g.node")}
    assert set(nodes) == {"up", "down"}
    for node in nodes.values():
        fill = node.find_element(By.TAG_NAME, "rect").get_attribute("fill")
        assert fill == STATE_COLOURS[node.get_attribute("data-state")]
    assert "solo" in browser.find_element(By.TAG_NAME, "main").text  # outside any pipeline, and said so
    shot(browser, tmp_path, "pipelines")


def test_an_injected_script_is_text_and_never_runs(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    _, url, _ = site
    for path, name in (("jobs/1", "job-history"), ("providers", "providers")):
        browser.get(url + path)
        assert SCRIPT in browser.find_element(By.TAG_NAME, "main").text, path  # shown, as text
        assert browser.execute_script("return window.pwned") is None, path
        assert "PWNED" not in browser.title
        if name == "providers":
            shot(browser, tmp_path, name)


def test_the_spend_page_loads(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    config, url, _ = site
    assert wait_until(lambda: db_state(config, 1) == "succeeded", timeout=60)
    browser.get(url + "spend")
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "By agent and provider" in text and re.search(r"\d{4}-\d{2} solo sim 1 \$4\.00", text), text
    shot(browser, tmp_path, "spend")


def test_served_off_loopback_from_the_database_alone_it_asks_for_the_token(browser, site, tmp_path):
    from selenium.webdriver.common.by import By

    config, _, _ = site
    other = config.parent / "serve.toml"
    other.write_text(config.read_text().replace(DASHBOARD, '\n[dashboard]\ntoken_env = "DASH_TOKEN"\n'))
    proc = subprocess.Popen([sys.executable, "-m", "ftctl", "--config", str(other), "dashboard", "--serve",
                             "--listen", "0.0.0.0:0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tempfile.gettempdir(), env=ftctl_env(DASH_TOKEN=TOKEN))
    try:
        line = proc.stdout.readline()  # "serving http://0.0.0.0:PORT/ (Ctrl-C stops)"
        port = re.search(r"serving http://0\.0\.0\.0:(\d+)/", line)
        assert port, line + proc.stderr.read()
        base = f"http://127.0.0.1:{port.group(1)}/"
        browser.get(base + "jobs/1")
        assert browser.find_element(By.TAG_NAME, "h1").text == "Log in"
        assert "ft:" not in browser.page_source and "job-1" not in browser.page_source
        field = browser.find_element(By.NAME, "token")
        field.send_keys("not the token")
        field.submit()
        assert "That is not the token." in browser.find_element(By.TAG_NAME, "main").text
        browser.find_element(By.NAME, "token").send_keys(TOKEN)
        browser.find_element(By.NAME, "token").submit()
        assert browser.find_element(By.TAG_NAME, "h1").text == "Jobs"
        assert browser.find_element(By.ID, "job-1")
        assert TOKEN not in browser.page_source
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
