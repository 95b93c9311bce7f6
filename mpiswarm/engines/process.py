"""A server process on loopback that a test or a benchmark started (no MPI, no imports beyond
the standard library: the engines' modules share it)."""
from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"


def http_status(url: str, timeout: float) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class ServerProcess:
    """One running server on ``HOST``: its port, process, log and command line."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    argv: tuple[str, ...]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def root_url(self) -> str:
        """``http://127.0.0.1:P``: the server's own routes (``/health``, ``/metrics``, ``/tokenize``)."""
        return f"http://{HOST}:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:P/v1``, the OpenAI-compatible base URL."""
        return f"{self.root_url}/v1"

    def is_running(self) -> bool:
        return self.process.poll() is None
