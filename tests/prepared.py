"""A once-a-session preparation of a real-engine tier (a build, an install), made when
collection finishes — before the tier's first test, so that minutes of work do not count
against a test's timeout — with its progress on the terminal, and handed to the fixtures."""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable

import pytest

#: make(log) returns ("ok", path), ("skip", why) or ("error", why)
Maker = Callable[[Callable[[str], None]], tuple[str, str]]


class Prepared:
    """What ``make`` prepares for the tests marked ``marker``, made once a session."""

    def __init__(self, marker: str, make: Maker):
        self.marker = marker
        self.make = make
        self.key = pytest.StashKey[tuple[str, str]]()

    def _run(self, config: pytest.Config) -> tuple[str, str]:
        capture = config.pluginmanager.getplugin("capturemanager")
        guard = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with guard:
            return self.make(lambda message: print(message, file=sys.stderr, flush=True))

    def on_collection_finish(self, session: pytest.Session) -> None:
        """Prepare now if a test of the tier was selected (call from ``pytest_collection_finish``)."""
        config = session.config
        if config.option.collectonly or self.key in config.stash:
            return
        if any(item.get_closest_marker(self.marker) for item in session.items):
            config.stash[self.key] = self._run(config)

    def path(self, config: pytest.Config) -> Path:
        """The prepared path; the calling test is skipped or fails when it could not be made."""
        if self.key not in config.stash:
            config.stash[self.key] = self._run(config)
        status, detail = config.stash[self.key]
        if status == "skip":
            pytest.skip(detail)
        if status == "error":
            pytest.fail(detail, pytrace=False)
        return Path(detail)
