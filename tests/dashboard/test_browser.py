"""The dashboard in a real headless Chromium, over the records of a scripted SimBroker run.

The run (tests/dashboard/scenario.py) goes in real time: the worker keeps consuming while
the pages are used, so "run again" is followed by a real completion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.dashboard import scenario as sc
from tests.dashboard.conftest import LoopThread, Served, serve, shut

WAIT = 20.0  # seconds any condition below may take


@dataclass
class Dash:
    url: str  # actions on, with a broker
    read_only_url: str
    scenario: sc.Scenario


@pytest.fixture(scope="module")
def dash(browser_ready: None, loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dash]:
    import nova
    from nova._clickhouse import ClickHouseTaskRecorder
    from nova._clock import SystemClock
    from nova.dashboard._app import create_app
    from nova.sim import SimBroker

    url = f"chdb://{tmp_path_factory.mktemp('dash-browser') / 'records'}"
    state: dict[str, Any] = {}

    async def start() -> Dash:
        recorder = ClickHouseTaskRecorder.from_url(url, store_payload=True)
        broker = SimBroker(clock=SystemClock())
        state.update(recorder=recorder)
        scenario = await sc.run(broker, recorder, deadline=WAIT)
        state.update(scenario=scenario)
        rerun_queue = nova.TaskQueue(broker, topic_prefix=sc.PREFIX)
        writable: Served = await serve(create_app(recorder, queue=rerun_queue, source="scripted run",
                                                  refresh_seconds=2))
        read_only: Served = await serve(create_app(recorder, read_only=True, source="scripted run"))
        state.update(servers=[writable, read_only])
        return Dash(writable.url, read_only.url, scenario)

    async def stop() -> None:
        for served in state.get("servers", []):
            await shut(served)
        if "scenario" in state and state["scenario"].worker is not None:
            await state["scenario"].worker.stop()
        if "recorder" in state:
            await state["recorder"].close()

    try:
        yield loop_thread.run(start)
    finally:
        loop_thread.run(stop)


def until(check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # noqa: BLE001 - the page may be between two states
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def page_errors(browser: Any) -> list[str]:
    """Console errors (a script or style the CSP refused shows up here)."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def cells(browser: Any, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]


def task_path(task_id: str) -> str:
    return "/tasks/" + quote(task_id, safe="")


def test_overview_shows_the_counts_per_status_and_draws_the_charts(browser: Any, dash: Dash,
                                                                   screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.get(dash.url + "/")
    rows = browser.find_elements(By.CSS_SELECTOR, "#queue-counts tbody tr")
    shown = {}
    for row in rows:
        counts = {c.get_attribute("data-status"): int(c.text)
                  for c in row.find_elements(By.CSS_SELECTOR, "td[data-status]")}
        shown[row.get_attribute("data-queue")] = {k: v for k, v in counts.items() if v}
    assert shown == {q: {s.value: n for s, n in per.items()} for q, per in sc.EXPECTED.items()}
    totals = {e.get_attribute("data-status"): int(e.text)
              for e in browser.find_elements(By.CSS_SELECTOR, ".cards .count[data-status]")}
    assert totals == {"pending": 1, "queued": 1, "completed": 7, "failed": 3}
    assert dash.scenario.id("idle") in browser.find_element(By.ID, "oldest-waiting").text
    until(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 3, "three charts")
    browser.save_screenshot(str(screenshots / "overview.png"))
    # the refresh swaps the body in place and can be paused
    marker = browser.execute_script("var b = document.getElementById('overview-body'); b.dataset.old = '1'; return 1")
    assert marker == 1
    until(lambda: browser.execute_script("return !document.getElementById('overview-body').dataset.old"),
          "the overview to refresh itself")
    until(lambda: len(browser.find_elements(By.CSS_SELECTOR, ".chart canvas")) == 3, "charts after the refresh")
    browser.find_element(By.ID, "refresh-toggle").click()
    assert browser.find_element(By.ID, "refresh-toggle").get_attribute("aria-pressed") == "true"
    assert page_errors(browser) == []


def test_the_status_filter_and_the_id_search_find_the_right_rows(browser: Any, dash: Dash, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    s = dash.scenario
    browser.get(dash.url + "/tasks")
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.tasks tbody tr[data-task-id]")) == 12
    Select(browser.find_element(By.NAME, "status")).select_by_value("failed")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    failed = {*s.ids["invoice"], *s.ids["hostile"]}
    until(lambda: set(cells(browser, "table.tasks tbody td.id")) == failed, "the three failed tasks")
    assert "status=failed" in browser.current_url  # htmx pushed the filter into the address
    assert set(cells(browser, "table.tasks tbody td .badge")) == {"failed"}
    browser.save_screenshot(str(screenshots / "tasks.png"))

    Select(browser.find_element(By.NAME, "status")).select_by_value("")
    Select(browser.find_element(By.NAME, "queue")).select_by_value("email")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    until(lambda: set(cells(browser, "table.tasks tbody td.id")) == set(s.ids["email"]), "the four email tasks")

    target = s.id("report", 1)
    box = browser.find_element(By.CSS_SELECTOR, "header .search input[name=q]")
    box.send_keys(target, Keys.ENTER)
    until(lambda: browser.find_element(By.ID, "task-id").text == target, "the task page of the id searched")
    box = browser.find_element(By.CSS_SELECTOR, "header .search input[name=q]")
    prefix = target[:-1]
    starting = {i for ids in s.ids.values() for i in ids if i.startswith(prefix)}
    box.send_keys(prefix, Keys.ENTER)
    until(lambda: set(cells(browser, "table.tasks tbody td.id")) == starting, "the tasks whose id starts so")
    assert target in starting
    assert page_errors(browser) == []


def test_a_task_page_shows_its_attempts_and_error(browser: Any, dash: Dash, screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    invoice = dash.scenario.id("invoice", 1)
    browser.get(dash.url + task_path(invoice))
    events = browser.find_elements(By.CSS_SELECTOR, "ol.timeline li")
    assert [(e.get_attribute("data-status"), e.get_attribute("data-attempt")) for e in events] == [
        ("queued", "1"), ("processing", "1"), ("retrying", "1"), ("processing", "2"), ("failed", "2")]
    error = 'ValueError: invoice {"invoice": 4712} has no lines'
    assert browser.find_element(By.ID, "last-error").text == error
    assert cells(browser, "ol.timeline li pre.error-text") == [error, error]
    assert browser.find_element(By.ID, "payload").text == '{\n  "invoice": 4712\n}'
    assert browser.find_element(By.ID, "rerun").is_displayed()
    browser.save_screenshot(str(screenshots / "task.png"))
    binary = dash.scenario.id("binary")
    browser.get(dash.url + task_path(binary))
    assert browser.find_element(By.ID, "payload").text.startswith("00000000  00 01 02 03")
    assert page_errors(browser) == []


def test_run_again_sends_a_dead_letter_back_and_the_page_shows_it_completed(browser: Any, dash: Dash,
                                                                          screenshots: Path) -> None:
    from selenium.webdriver.common.by import By

    s = dash.scenario
    invoice, hostile = s.id("invoice", 0), s.id("hostile")
    browser.get(dash.url + "/failures")
    assert set(cells(browser, "table.tasks tbody td.id")) == {*s.ids["invoice"], *s.ids["hostile"]}
    browser.save_screenshot(str(screenshots / "failures.png"))
    s.fixed.update({"invoice.create", sc.HOSTILE})  # the bug is fixed: the next run succeeds
    for task_id in (invoice, hostile):
        browser.find_element(By.CSS_SELECTOR, f'input[name=ids][value="{task_id}"]').click()
    browser.find_element(By.ID, "rerun-selected").click()
    notice = until(lambda: browser.find_element(By.ID, "notice").text, "the outcome of run again")
    assert notice.count("sent again to queue 'default'") == 2
    assert set(cells(browser, "table.tasks tbody td.id")) == {s.id("invoice", 1)}  # the others are queued now

    browser.get(dash.url + task_path(invoice))

    def completed() -> bool:
        browser.refresh()
        return browser.find_element(By.CSS_SELECTOR, "h1 .badge").text == "completed"

    until(completed, "the worker to complete the task run again")
    runs = browser.find_elements(By.CSS_SELECTOR, ".run")
    assert len(runs) == 2 and "run again from the dashboard" in runs[1].text
    assert [e.get_attribute("data-status") for e in runs[1].find_elements(By.CSS_SELECTOR, "li")] == [
        "queued", "processing", "completed"]
    assert browser.find_element(By.ID, "headers").text == "rerun 1"
    assert not browser.find_elements(By.ID, "rerun")  # completed: nothing to run again
    browser.save_screenshot(str(screenshots / "task-run-again.png"))
    assert page_errors(browser) == []


def test_read_only_mode_offers_no_action(browser: Any, dash: Dash) -> None:
    from selenium.webdriver.common.by import By

    browser.get(dash.read_only_url + task_path(dash.scenario.id("invoice", 1)))
    assert browser.find_element(By.ID, "read-only").is_displayed()
    assert browser.find_element(By.CSS_SELECTOR, "h1 .badge").text == "failed"
    for url in (task_path(dash.scenario.id("invoice", 1)), "/failures", "/tasks", "/"):
        browser.get(dash.read_only_url + url)
        assert browser.find_elements(By.CSS_SELECTOR, "form[method=post], input[name=ids], #rerun, #delete") == []


def test_a_hostile_task_type_renders_as_text(browser: Any, dash: Dash) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    browser.get(dash.url + "/tasks?type=" + quote(sc.HOSTILE, safe=""))
    assert cells(browser, "table.tasks tbody td.type") == [sc.HOSTILE]
    browser.get(dash.url + task_path(dash.scenario.id("hostile")))
    assert browser.find_element(By.CSS_SELECTOR, "dd.type").text == sc.HOSTILE
    assert f"note {sc.HOSTILE_HEADER}" in browser.find_element(By.ID, "headers").text
    assert browser.find_element(By.ID, "payload").text == sc.HOSTILE_HEADER
    assert sc.HOSTILE_ERROR in browser.find_element(By.CSS_SELECTOR, "ol.timeline").text
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is the check
