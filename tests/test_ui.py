"""The Flow tabs in Airflow's own UI, in a real browser, under a real deployment.

Debian's chromium, driven headless by Playwright (``executable_path``; Playwright never
downloads a browser here), logs in through SimpleAuthManager's form, triggers a run with tags
through the trigger form, opens the Flow tabs of a DataFrame result, a figure card, a
``.foreach`` with a failed item and a caught ``Failure``, adds a tag, and filters the DAG's
runs by it. A second user without access to the DAG gets 403 from every endpoint.

``FLOWTASK_UI_SCREENSHOTS=docs/ui .venv/bin/python -m pytest tests/test_ui.py`` also saves
the tabs as the pictures the README shows.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from deployment import USERNAME, Deployment

DEPLOY_DAGS = Path(__file__).resolve().parent / "deploy_dags"
CHROMIUM = "/usr/bin/chromium"
DAG = "deploy_ui"
OUTSIDER = "outsider"  # SimpleAuthManager user with no role: no access to any DAG

pytestmark = [pytest.mark.deployment, pytest.mark.dags_test]


@pytest.fixture(scope="module")
def deployment(
    migrated_db: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Deployment]:
    cache = getattr(request.config, "cache", None)
    pycache = cache.mkdir("deployment-pycache") if cache is not None else None
    home = tmp_path_factory.mktemp("ui-deployment")
    running = Deployment(home, DEPLOY_DAGS, migrated_db, pycache=pycache, users={OUTSIDER: ""})
    with running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
        )
        yield launched
        launched.close()


def _screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("FLOWTASK_UI_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def ui_run(deployment: Deployment, browser: Any) -> Iterator[tuple[Any, str]]:
    """A logged-in page and a run of deploy_ui triggered through the form with two tags."""
    from playwright.sync_api import expect

    deployment.wait_for_dag(DAG)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(deployment.url + "/")
    page.locator("input[name=username]").fill(USERNAME)
    page.locator("input[name=password]").fill(deployment.password)
    page.locator("button[type=submit]").click()
    page.wait_for_url(lambda url: "/auth/login" not in url)
    page.goto(f"{deployment.url}/dags/{DAG}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator("#element_flow_tags").fill("ui-test\nbrowser")
    dialog.get_by_role("button", name="Trigger").click()
    expect(dialog).to_be_hidden()
    api = deployment.api
    runs = deployment.wait_until(lambda: api.dag_runs(DAG), "the triggered run", timeout=30)
    run_id = runs[0]["dag_run_id"]
    assert runs[0]["conf"]["flow_tags"] == ["ui-test", "browser"]
    assert api.wait_for_run(DAG, run_id, timeout=180) == "success", api.task_states(DAG, run_id)
    yield page, run_id
    page.close()


def _tab(page: Any, url: str, title: str) -> tuple[Any, float]:
    """Open a Flow tab; the frame and the seconds until its page showed."""
    from playwright.sync_api import expect

    started = time.monotonic()
    page.goto(url)
    frame = page.frame_locator("iframe[title^=Flow]")
    expect(frame.locator("h1")).to_contain_text(title)
    return frame, time.monotonic() - started


def test_the_flow_tabs_show_results_cards_foreach_and_failures(
    deployment: Deployment, ui_run: tuple[Any, str]
):
    from playwright.sync_api import expect

    page, run_id = ui_run
    base = f"{deployment.url}/dags/{DAG}/runs/{run_id}"
    opened = {}

    frame, opened["frame"] = _tab(page, f"{base}/tasks/frame/plugin/flow-task", "frame")
    table = frame.get_by_test_id("preview-table")
    expect(table).to_contain_text("alpha")
    expect(table).to_contain_text("float64")
    expect(frame.get_by_test_id("try-result")).to_contain_text("pandas.DataFrame")
    expect(frame.get_by_test_id("cards").locator("h2")).to_have_text("Scores")
    expect(frame.get_by_test_id("cards")).to_contain_text("gamma")
    expect(frame.get_by_test_id("download")).to_contain_text("KiB")  # the size, before it
    expect(frame.get_by_test_id("usage-bars")).to_contain_text("memory peak")
    expect(frame.get_by_test_id("try-where")).to_contain_text("local")
    _screenshot(page, "task-dataframe")

    frame, opened["figure"] = _tab(page, f"{base}/tasks/figure/plugin/flow-task", "figure")
    picture = frame.get_by_test_id("card-image")
    expect(picture).to_be_visible()
    expect(frame.get_by_test_id("cards")).to_contain_text("loss by epoch")
    assert picture.evaluate("img => img.complete && img.naturalWidth") > 100  # loaded, a PNG
    _screenshot(page, "task-figure-card")

    frame, opened["square"] = _tab(page, f"{base}/tasks/square/plugin/flow-task", "square")
    expect(frame.get_by_test_id("foreach-summary")).to_contain_text(
        "59 of 60 items done, 1 failed, in 3 chunks of 20"
    )
    expect(frame.get_by_test_id("foreach-failed")).to_contain_text("item 7 is bad")
    expect(frame.get_by_test_id("foreach-chunks").locator("tr")).to_have_count(4)
    items = frame.get_by_test_id("foreach-items")
    expect(items.locator("tr").nth(4)).to_contain_text("int: 9")  # item 3
    expect(items.locator("tr").nth(8)).to_contain_text("item 7 is bad")
    _screenshot(page, "task-foreach")

    frame, opened["broken"] = _tab(page, f"{base}/tasks/broken/plugin/flow-task", "broken")
    expect(frame.get_by_test_id("preview-failure")).to_contain_text("builtins.KeyError")
    expect(frame.get_by_test_id("preview-failure")).to_contain_text("missing column")
    expect(frame.locator("pre")).to_contain_text("raise KeyError")
    _screenshot(page, "task-failure")
    print(f"Flow tabs opened in {opened} s")


def test_a_tag_added_in_the_run_tab_is_recorded_and_filters_the_dags_runs(
    deployment: Deployment, ui_run: tuple[Any, str]
):
    from playwright.sync_api import expect

    from provider.client import Flow

    page, run_id = ui_run
    frame, _ = _tab(page, f"{deployment.url}/dags/{DAG}/runs/{run_id}/plugin/flow-run", run_id)
    expect(frame.get_by_test_id("run-namespace")).to_have_text(f"user:{USERNAME}")
    expect(frame.get_by_test_id("run-tasks")).to_contain_text("DataFrame (3, 2)")
    expect(frame.get_by_test_id("run-usage")).to_contain_text("memory=256")
    form = frame.get_by_test_id("add-tag")
    form.locator("input[name=tag]").fill("reviewed")
    form.get_by_role("button", name="Add tag").click()
    expect(frame.get_by_test_id("run-tags")).to_contain_text("reviewed")
    _screenshot(page, "run")
    run = Flow(DAG, deployment.artifacts.as_uri())[run_id]
    assert run.system_tags == ("ui-test", "browser") and run.user_tags == ("reviewed",)

    frame, _ = _tab(page, f"{deployment.url}/dags/{DAG}/plugin/flow-dag", f"{DAG}: runs")
    for tag, rows in (("reviewed", 2), ("no-such-tag", 1)):  # a header row, and the runs
        frame.get_by_test_id("dag-filter").locator("input[name=tag]").fill(tag)
        frame.get_by_test_id("dag-filter").get_by_role("button", name="Filter").click()
        # The filtered page has loaded (the frame reloads: what was there before is no answer).
        expect(frame.get_by_test_id("dag-summary")).to_contain_text(f"tagged {tag}")
        expect(frame.get_by_test_id("dag-runs").locator("tr")).to_have_count(rows)
    frame.get_by_test_id("dag-filter").locator("input[name=tag]").fill("reviewed")
    frame.get_by_test_id("dag-filter").get_by_role("button", name="Filter").click()
    expect(frame.get_by_test_id("dag-summary")).to_contain_text("tagged reviewed")
    expect(frame.get_by_test_id("dag-runs")).to_contain_text(run_id)
    _screenshot(page, "dag")


def test_a_user_without_access_to_the_dag_gets_403_from_every_endpoint(
    deployment: Deployment, ui_run: tuple[Any, str]
):
    _, run_id = ui_run
    admin = deployment.api.client
    manifest = _manifest(deployment, run_id, "figure")
    picture = manifest["views"]["images"][0]["sha256"]
    run = f"/flowtask/dags/{DAG}/runs/{run_id}"
    reads = [
        f"/flowtask/dags/{DAG}",
        run,
        f"{run}/tasks/frame",
        f"{run}/tasks/square?items_from=50",
        f"{run}/tasks/figure/tries/1/images/{picture}",
        f"{run}/tasks/frame/tries/1/result",
    ]
    for path in reads:  # each answers the admin: the 403 below is about the user
        assert admin.get(path).status_code == 200, path
    downloaded = admin.get(f"{run}/tasks/frame/tries/1/result")
    stored = _manifest(deployment, run_id, "frame")["result"]
    assert len(downloaded.content) == stored["size"]  # the stored bytes, streamed as they are
    assert hashlib.sha256(downloaded.content).hexdigest() == stored["sha256"]
    assert downloaded.headers["x-flowtask-sha256"] == stored["sha256"]
    token = httpx.post(
        f"{deployment.url}/auth/token",
        json={"username": OUTSIDER, "password": deployment.passwords[OUTSIDER]},
    ).json()["access_token"]
    as_outsider = [  # the API's bearer token, and the UI's cookie (what the tabs' iframes send)
        httpx.Client(base_url=deployment.url, headers={"Authorization": f"Bearer {token}"}),
        httpx.Client(base_url=deployment.url, cookies={"_token": token}),
    ]
    for outsider in as_outsider:
        with outsider:
            for path in reads:
                response = outsider.get(path)
                assert response.status_code == 403, (path, response.status_code)
                assert run_id not in response.text and "alpha" not in response.text
            assert outsider.post(f"{run}/tags", json={"add": ["x"]}).status_code == 403
    anonymous = httpx.get(f"{deployment.url}{run}")
    assert anonymous.status_code == 401
    from provider.client import Flow

    assert "x" not in Flow(DAG, deployment.artifacts.as_uri())[run_id].tags


def test_flow_tasks_carry_pod_and_batch_job_links(deployment: Deployment, ui_run: tuple[Any, str]):
    _, run_id = ui_run
    links = deployment.api.request(
        "GET", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/frame/links"
    ).json()["extra_links"]
    # It ran locally: no console to link.
    assert links == {"Batch job": None, "CloudWatch log": None, "Pod": None}


def _manifest(deployment: Deployment, run_id: str, task_id: str) -> dict:
    from provider.store import manifest_key, open_store

    store = open_store(deployment.artifacts.as_uri())
    return store.read_manifest(manifest_key(DAG, run_id, task_id, -1, 1))
