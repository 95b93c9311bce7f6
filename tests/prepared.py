"""A real-engine tier (``tests/engine``, ``tests/vllm``): every test of its directory marked
with the tier's marker, and its once-a-session preparation (a build, an install), made when
collection finishes — before the tier's first test, so that minutes of work do not count
against a test's timeout — with its progress on the terminal, and handed to the fixtures.

A tier's ``conftest.py`` makes one :class:`Prepared` and names its two hooks::

    _TIER = Prepared("engine", make, Path(__file__).parent)
    pytest_collection_modifyitems, pytest_collection_finish = _TIER.hooks()
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Callable

import pytest

#: make(log) returns ("ok", path), ("skip", why) or ("error", why)
Maker = Callable[[Callable[[str], None]], tuple[str, str]]


class Prepared:
    """The tier of the tests below ``directory``: marked ``marker`` (and given ``timeout``
    seconds each, when set), with what ``make`` prepares for them made once a session."""

    def __init__(self, marker: str, make: Maker, directory: Path, timeout: float | None = None):
        self.marker = marker
        self.make = make
        self.directory = Path(directory).resolve()
        self.timeout = timeout
        self.key = pytest.StashKey[tuple[str, str]]()

    @pytest.hookimpl(tryfirst=True)  # before ``-m`` selection looks at the marks
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        """Mark every test of the tier's directory."""
        for item in items:
            if self.directory in item.path.resolve().parents:
                item.add_marker(getattr(pytest.mark, self.marker))
                if self.timeout is not None:
                    item.add_marker(pytest.mark.timeout(self.timeout))

    def hooks(self) -> tuple[Callable[..., None], Callable[..., None]]:
        """The tier's ``pytest_collection_modifyitems`` and ``pytest_collection_finish``, for
        its ``conftest.py`` to bind to those names."""
        return self.pytest_collection_modifyitems, self.pytest_collection_finish

    def _run(self, config: pytest.Config) -> tuple[str, str]:
        capture = config.pluginmanager.getplugin("capturemanager")
        guard = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
        with guard:
            return self.make(lambda message: print(message, file=sys.stderr, flush=True))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Prepare before the tier's first test runs, if one was selected."""
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
