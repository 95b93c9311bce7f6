"""Which endpoint each rank talks to (pure functions, no MPI, no network)."""
from __future__ import annotations

import os
import string
import urllib.parse
from dataclasses import dataclass, field

from .inputs import InputError

DEFAULT_PORT = 8000
_PLACEHOLDERS = {"rank", "local_rank", "host", "port"}


@dataclass(frozen=True)
class HostEntry:
    """One line of an Aurora-Swarm hostfile."""

    host: str
    port: int = DEFAULT_PORT
    options: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"


def check_template(template: str) -> None:
    """Raise :class:`InputError` if ``template`` uses an unknown or malformed placeholder, or
    is not one http(s) URL with a host (a list of them, say: one URL serves every rank, with
    placeholders or ``--hostfile`` for one a rank)."""
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise InputError(f"--endpoint {template!r}: {exc}") from None
    unknown = names - _PLACEHOLDERS
    if unknown:
        raise InputError(
            f"--endpoint {template!r}: unknown placeholder {{{sorted(unknown)[0]}}} "
            f"(known: {', '.join('{%s}' % p for p in sorted(_PLACEHOLDERS))})"
        )
    url = expand_endpoint(template, rank=0, local_rank=0, host="localhost", base_port=DEFAULT_PORT)
    if "," in url or any(c.isspace() for c in url):
        raise InputError(f"--endpoint {template!r}: one URL, not a list: give every rank its own with "
                         "{port}, {rank} or {host} placeholders, or --hostfile")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises on a port that is not a number in range)
    except ValueError as exc:
        raise InputError(f"--endpoint {template!r}: not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InputError(f"--endpoint {template!r}: not an http(s) URL with a host, e.g. http://127.0.0.1:8000/v1")


def expand_endpoint(template: str, *, rank: int, local_rank: int, host: str, base_port: int) -> str:
    """Fill ``{rank}``, ``{local_rank}``, ``{host}`` and ``{port}`` (= base_port + local_rank)."""
    return template.format(rank=rank, local_rank=local_rank, host=host, port=base_port + local_rank)


def _parse_port(text: str, where: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise InputError(f"{where}: bad port {text!r}")
    return int(text)


def parse_hostfile(path: str | os.PathLike) -> list[HostEntry]:
    """Parse an Aurora-Swarm hostfile: ``host<TAB>port<TAB>key=value…`` a line.

    The port is optional (default 8000) and ``host:port`` is accepted too; ``#`` comments
    and blank lines are skipped. Raises :class:`InputError` naming file and line.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise InputError(f"{path}: no such hostfile") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read hostfile ({exc})") from None
    entries = []
    for lineno, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{path}:{lineno}"
        fields = line.split()
        host, port = fields[0], DEFAULT_PORT
        rest = fields[1:]
        if host.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
            host, port_text = host.split(":")
            port = _parse_port(port_text, where)
        elif rest and "=" not in rest[0]:
            port = _parse_port(rest.pop(0), where)
        options = {}
        for item in rest:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise InputError(f"{where}: expected key=value, got {item!r}")
            options[key] = value
        if not host:
            raise InputError(f"{where}: empty host")
        entries.append(HostEntry(host, port, options))
    if not entries:
        raise InputError(f"{path}: hostfile lists no endpoints")
    return entries


def endpoint_from_hostfile(entries: list[HostEntry], rank: int) -> str:
    """Rank *r* uses entry *r* modulo the number of entries."""
    return entries[rank % len(entries)].url
