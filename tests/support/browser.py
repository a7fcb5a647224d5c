"""Headless Chromium through WebDriver (Debian's chromium + chromium-driver), for what browsers do."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
# Where a failed browser test leaves its screenshot, page and console log: test-artifacts/ in the
# repository unless VOICEFORGE_TEST_ARTIFACTS names another folder.
ARTIFACTS = Path(os.environ.get("VOICEFORGE_TEST_ARTIFACTS")
                 or Path(__file__).resolve().parents[2] / "test-artifacts")


def fake_microphone(wav: Path) -> tuple[str, ...]:
    """Chromium flags that make getUserMedia grant a microphone playing `wav` (looped), without asking."""
    return ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
            f"--use-file-for-fake-audio-capture={wav}")


@contextmanager
def chromium(*extra_arguments: str) -> Iterator[Any]:
    """A headless Chromium session; skips the test where Chromium is not installed (.ci/run installs it)."""
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (bash .ci/run installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # As root in a container, without a GPU, and without the background connections this machine's
    # closed network refuses; media may play without a user gesture, as after a click in the app.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--autoplay-policy=no-user-gesture-required", *extra_arguments):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # driver.get_log("browser")
    with tempfile.TemporaryDirectory() as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            driver.set_script_timeout(60)
            yield driver
        finally:
            driver.quit()


def save_artifacts(driver: Any, name: str) -> Path:
    """Save a screenshot, the page's HTML and the browser console's log as ARTIFACTS/<name>.*"""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = ARTIFACTS / re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:120]
    driver.get_screenshot_as_file(str(stem.with_suffix(".png")))
    stem.with_suffix(".html").write_text(driver.page_source, encoding="utf-8")
    log = "\n".join(f"{entry['level']} {entry['message']}" for entry in driver.get_log("browser"))
    stem.with_suffix(".log").write_text(log, encoding="utf-8")
    return stem


@contextmanager
def artifacts_on_failure(driver: Any, request: pytest.FixtureRequest) -> Iterator[None]:
    """Save the browser's artifacts when the test fails: around a fixture's yield, or inside a test.

    A fixture never sees the test's exception, so the session's failure count tells instead (pytest
    raises it when the test's report is logged, before the fixture's teardown runs).
    """
    failed_before = request.session.testsfailed
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        if failed or request.session.testsfailed > failed_before:
            try:
                save_artifacts(driver, request.node.name)
            except Exception:  # noqa: BLE001 - a dead browser must not hide the test's own failure
                pass
