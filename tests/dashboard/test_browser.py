"""The dashboard in a real browser (Playwright driving Debian's Chromium).

Skipped, with the reason printed, when Playwright or /usr/bin/chromium is
missing, unless ``CI`` is set: then they fail instead. Screenshots of each
page are saved under the test's tmp_path, for a human to look at.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import TOKEN, Server, in_ci, poll

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
SLOW = "examples.jobs:SlowJob"
WAIT_MS = 20_000


def _missing() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright)"
    if not os.path.exists(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Chromium, launched once per module."""
    reason = _missing()
    if reason is not None:
        if in_ci():
            pytest.fail(f"{reason}; CI is set, so the browser tests must run", pytrace=False)
        print(f"\nskipping the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A fresh browser page; it fails the test on any script error or CSP violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: problems.append(str(e)))
    tab.on("dialog", lambda d: d.accept())
    tab.problems = problems
    yield tab
    context.close()
    assert not [p for p in problems if "favicon" not in p], problems


def log_in(page: Any, server: Server, path: str = "/jobs") -> None:
    page.goto(server.url + path)
    assert "/login" in page.url
    page.fill("#token", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{server.url}{path}")


def shot(page: Any, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def test_log_in_and_see_the_live_list(page: Any, server: Server, tmp_path: Path) -> None:
    """Logging in through the form lands on the job list; live counts arrive over SSE."""
    job_id = server.dispatch("handle", [])
    server.wait_status(job_id, "completed")
    page.goto(server.url + "/jobs")
    shot(page, tmp_path, "login")
    log_in(page, server)
    assert page.locator(f'tr[data-id="{job_id}"] [data-field=status]').inner_text() == "completed"
    page.wait_for_function(
        "() => document.querySelector('[data-count=completed]').textContent !== '…'")
    assert int(page.inner_text("[data-count=completed]")) >= 1
    page.locator("[data-live-state]:not([hidden])").wait_for()
    shot(page, tmp_path, "jobs")


def test_dispatch_from_the_form_and_watch_it_complete(page: Any, server: Server,
                                                      tmp_path: Path) -> None:
    """A job dispatched from the form shows up on an open list and reaches completed, no reload."""
    log_in(page, server)
    page.evaluate("window.__notReloaded = true")
    form = page.context.new_page()
    form.goto(server.url + "/allowed")
    shot(form, tmp_path, "allowed")
    form.click('a[href="/dispatch/examples.jobs:SampleJob/process"]')
    form.fill('input[name="p.name"]', "browser")
    form.fill('input[name="p.times"]', "2")
    form.check('input[name="p.loud"]')
    shot(form, tmp_path, "dispatch")
    form.click("button.primary")
    form.wait_for_url("**/jobs/*?notice=dispatched")
    job_id = form.url.split("/jobs/")[1].split("?")[0]
    form.locator(".heading [data-field=status]", has_text="completed").wait_for()
    form.locator("[data-refresh=attempts] .badge", has_text="completed").wait_for()
    assert "HELLO BROWSER" in form.inner_text("[data-output]")
    shot(form, tmp_path, "job-completed")
    row = page.locator(f'tr[data-id="{job_id}"]')
    row.locator("[data-field=status]", has_text="completed").wait_for()
    assert page.evaluate("window.__notReloaded") is True
    assert "SampleJob" in row.inner_text()


def test_cancel_a_running_job_from_its_page(page: Any, server: Server, tmp_path: Path) -> None:
    """The Cancel button of a running SlowJob cancels it; the page then says cancelled."""
    job_id = server.dispatch("run", {"steps": 300, "delay": 0.1}, target=SLOW)
    log_in(page, server, f"/jobs/{job_id}")
    page.locator(".heading [data-field=status]", has_text="running").wait_for()
    page.locator("[data-process]:not([hidden])").wait_for()
    page.click(".heading-side .act-cancel button")
    page.wait_for_url("**notice=cancelled")
    assert page.inner_text(".heading [data-field=status]") == "cancelled"
    assert server.job(job_id)["status"] == "cancelled"
    shot(page, tmp_path, "job-cancelled")


def test_progress_bar_moves(page: Any, server: Server, tmp_path: Path) -> None:
    """A SlowJob's progress bar advances on its page while it runs, without a reload."""
    # 10 s of steps: a loaded CI machine may take seconds to log in and open the page.
    job_id = server.dispatch("run", {"steps": 40, "delay": 0.25}, target=SLOW)
    log_in(page, server, f"/jobs/{job_id}")
    page.evaluate("window.__notReloaded = true")
    bar = "document.querySelector('[data-progress]')"
    seen: list[float] = []

    def advanced() -> bool:
        value = page.evaluate(f"{bar}.hasAttribute('value') ? {bar}.value : -1")
        if value >= 0 and (not seen or value != seen[-1]):
            seen.append(value)
        return len(seen) >= 3

    poll(advanced, timeout=20, what="the progress bar to move")
    shot(page, tmp_path, "job-progress")
    assert seen == sorted(seen) and seen[-1] > seen[0]
    page.locator(".heading [data-field=status]", has_text="completed").wait_for()
    assert page.evaluate(f"{bar}.value") == 40
    assert page.evaluate("window.__notReloaded") is True


def test_screenshots_of_every_page(browser: Any, fresh_server: Callable[..., Server],
                                   tmp_path: Path) -> None:
    """Every page renders in the browser (screenshots kept for a human to look at)."""
    server = fresh_server()
    for i in range(3):
        server.dispatch("process", {"name": f"user-{i}", "times": i + 1})
    server.dispatch("fail", {"message": "upstream returned 503"}, target="examples.jobs:FlakyJob")
    slow = server.dispatch("run", {"steps": 400, "delay": 0.1}, target=SLOW)
    server.dispatch("process", {"name": "<script>alert(1)</script>"})
    server.dispatch("handle", [], delay=600, priority=5)
    cancelled = server.dispatch("run", {"steps": 50}, target=SLOW, delay=600)
    server.api.post(f"/api/jobs/{cancelled}/cancel")
    poll(lambda: (j := server.job(slow))["progress"] and j["progress"]["done"] >= 3,
         what="the slow job to make progress")
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    log_in(tab, server, "/")
    for name, path in (("overview", "/"), ("allowed", "/allowed"), ("audit", "/audit"),
                       ("job-running", f"/jobs/{slow}"), ("jobs", "/jobs"), ("logs", "/logs")):
        tab.goto(server.url + path)
        if name in ("overview", "jobs"):
            tab.wait_for_function(
                "() => document.querySelector('[data-count=completed]').textContent !== '…'")
        if name == "job-running":
            tab.wait_for_function(
                "() => document.querySelector('[data-proc=cpu]').textContent.includes('%')")
        shot(tab, tmp_path, name)
    context.close()
