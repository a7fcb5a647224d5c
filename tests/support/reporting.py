"""Printing benchmark-style figures from tests to the terminal, past pytest's capture."""

from __future__ import annotations

import pytest


def show(request: pytest.FixtureRequest, line: str) -> None:
    """Write figures to the terminal even while pytest captures output (as -s would show them)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(f"\n{line}")
