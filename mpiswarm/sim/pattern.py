"""A string that fully matches a regular expression, or a GBNF grammar: the simulator's answer to
``structured_outputs`` ``regex`` and ``grammar`` (pure, deterministic per seed bytes).

The regex subset (:func:`regex_example`): literals and escaped characters; ``.``; the classes
``\\d \\w \\s`` (and ``\\D \\W \\S``); bracket classes ``[a-z0-9_]`` and negated ones ``[^…]``;
groups ``(…)``, ``(?:…)`` and named ``(?P<name>…)``; alternation ``|``; the quantifiers ``? * +
{m} {m,} {m,n}`` (a lazy or possessive suffix is read and ignored); anchors ``^ $ \\A \\Z \\b`` are
dropped. Anything else (back references, look-arounds, flags) is a ValueError naming it, which the
simulator answers with a 400. Unbounded repetition (``*``, ``+``, ``{m,}``) repeats at most
:data:`MAX_REPEAT` times more than its minimum. The result is checked with :func:`re.fullmatch`.

The grammar subset (:func:`grammar_example`): GBNF as llama.cpp and vLLM's xgrammar read it —
rules ``name ::= expression``, ``root`` first; string literals ``"…"``, character classes
``[…]``, rule references, grouping, ``|`` and the quantifiers above — when no rule refers to
itself (directly or through others): each rule is then written as a regex and
:func:`regex_example` answers it. A recursive grammar, or a Lark one, is a ValueError.
"""
from __future__ import annotations

import re

#: how many more times than its minimum an unbounded repetition repeats, at most
MAX_REPEAT = 3
_PRINTABLE = [chr(c) for c in range(0x21, 0x7F)]
_CLASSES = {"d": "0123456789", "w": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_",
            "s": " "}
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}


class _Picks:
    """Deterministic choices from seed bytes, cycling."""

    def __init__(self, seed: bytes):
        self.seed, self.at = seed or b"\0", 0

    def __call__(self, n: int) -> int:
        byte = self.seed[self.at % len(self.seed)] + self.at // len(self.seed)
        self.at += 1
        return byte % n


def regex_example(pattern: str, seed: bytes) -> str:
    """A string that fully matches ``pattern`` (the subset in the module docstring), chosen by
    ``seed``; ValueError naming what is not supported."""
    parser = _Parser(pattern, _Picks(seed))
    text = parser.alternation()
    if parser.at != len(pattern):
        raise ValueError(f"unbalanced ')' at {parser.at} in the regex {pattern!r}")
    try:
        matched = re.fullmatch(pattern, text) is not None
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    if not matched:
        raise ValueError(f"the simulator cannot generate a match of the regex {pattern!r}")
    return text


class _Parser:
    """A recursive-descent reader of the regex that writes one match as it reads."""

    def __init__(self, pattern: str, pick: _Picks):
        self.p, self.at, self.pick = pattern, 0, pick

    def peek(self) -> str:
        return self.p[self.at] if self.at < len(self.p) else ""

    def unsupported(self, what: str) -> ValueError:
        return ValueError(f"the simulator does not generate regex {what} (at {self.at} in {self.p!r})")

    def alternation(self) -> str:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.at += 1
            branches.append(self.sequence())
        return branches[self.pick(len(branches))]

    def sequence(self) -> str:
        out = []
        while self.peek() not in ("", "|", ")"):
            atom = self.atom()
            if atom is None:  # an anchor: matches the empty string
                continue
            low, high = self.quantifier()
            count = low if high == low else low + self.pick(high - low + 1)
            out.append("".join(atom() for _ in range(count)))
        return "".join(out)

    def quantifier(self) -> tuple[int, int]:
        c = self.peek()
        if c in ("?", "*", "+"):
            self.at += 1
            bounds = {"?": (0, 1), "*": (0, MAX_REPEAT), "+": (1, 1 + MAX_REPEAT)}[c]
        elif c == "{" and re.match(r"\{\d+(,\d*)?\}", self.p[self.at:]):
            body = self.p[self.at + 1:self.p.index("}", self.at)]
            self.at += len(body) + 2
            low, _, high = body.partition(",")
            bounds = (int(low), int(low) if not _ else int(high) if high else int(low) + MAX_REPEAT)
        else:
            return 1, 1
        if self.peek() in ("?", "+"):  # lazy or possessive: the same strings
            self.at += 1
        return bounds

    def atom(self):
        """A function giving one match of the next atom (called once per repetition), or None
        for an anchor."""
        c = self.peek()
        self.at += 1
        if c in "^$":
            return None
        if c == ".":
            return lambda: _PRINTABLE[self.pick(len(_PRINTABLE))]
        if c == "[":
            chars = self.bracket()
            return lambda: chars[self.pick(len(chars))]
        if c == "(":
            return self.group()
        if c == "\\":
            return self.escape()
        if c in "*+?{":
            raise self.unsupported(f"a quantifier with nothing to repeat ({c!r})")
        return lambda: c

    def group(self):
        if self.p.startswith("?:", self.at):
            self.at += 2
        elif self.p.startswith("?P<", self.at):
            self.at = self.p.index(">", self.at) + 1
        elif self.peek() == "?":
            raise self.unsupported("look-arounds, flags and back references")
        start = self.at
        self.alternation()  # parse once to find its end; each repetition parses it again
        end = self.at
        if self.peek() != ")":
            raise ValueError(f"unclosed group in the regex {self.p!r}")
        self.at += 1

        def one() -> str:
            inner = _Parser(self.p[start:end], self.pick)
            return inner.alternation()
        return one

    def escape(self):
        c = self.peek()
        self.at += 1
        if c.lower() in _CLASSES:
            chars = _CLASSES[c.lower()] if c.islower() else [x for x in _PRINTABLE if x not in _CLASSES[c.lower()]]
            return lambda: chars[self.pick(len(chars))]
        if c in "AZbB":
            return None
        if c.isdigit() or c in "pPkg":
            raise self.unsupported(f"escape \\{c}")
        char = _ESCAPES.get(c, c)
        return lambda: char

    def bracket(self) -> list[str]:
        negate = self.peek() == "^"
        self.at += negate
        chars: list[str] = []
        first = True
        while self.peek() and (self.peek() != "]" or first):
            first = False
            c = self.peek()
            self.at += 1
            if c == "\\":
                e = self.peek()
                self.at += 1
                if e.lower() in _CLASSES:
                    chars += _CLASSES[e.lower()] if e.islower() else []
                    continue
                c = _ESCAPES.get(e, e)
            if self.peek() == "-" and self.p[self.at + 1:self.at + 2] not in ("]", ""):
                end = self.p[self.at + 1]
                self.at += 2
                chars += [chr(x) for x in range(ord(c), ord(end) + 1)]
            else:
                chars.append(c)
        if self.peek() != "]":
            raise ValueError(f"unclosed character class in the regex {self.p!r}")
        self.at += 1
        if negate:
            chars = [x for x in _PRINTABLE if x not in chars]
        if not chars:
            raise self.unsupported("an empty character class")
        return chars


_RULE = re.compile(r"^\s*([A-Za-z][\w-]*)\s*::=", re.M)
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|\[(?:[^\]\\]|\\.)*\]|[A-Za-z][\w-]*|[()|?*+]|\{\d+(?:,\d*)?\}|\s+|#[^\n]*|.',
                    re.S)


def grammar_example(grammar: str, seed: bytes) -> str:
    """A string of the language of a GBNF ``grammar`` without recursion (module docstring),
    chosen by ``seed``; ValueError for another grammar."""
    starts = list(_RULE.finditer(grammar))
    if not starts:
        raise ValueError("the simulator reads GBNF grammars only (rules 'name ::= …')")
    rules = {m.group(1): grammar[m.end():(starts[k + 1].start() if k + 1 < len(starts) else len(grammar))]
             for k, m in enumerate(starts)}
    root = "root" if "root" in rules else starts[0].group(1)
    return regex_example(_as_regex(root, rules, ()), seed)


def _as_regex(name: str, rules: dict[str, str], seen: tuple[str, ...]) -> str:
    if name in seen:
        raise ValueError(f"the simulator does not generate recursive grammars (rule {name!r})")
    if name not in rules:
        raise ValueError(f"grammar rule {name!r} is not defined")
    out = []
    for token in _TOKEN.findall(rules[name]):
        if token.isspace() or token.startswith("#"):
            continue
        if token.startswith('"'):
            out.append(re.escape(token[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")))
        elif token.startswith("["):
            out.append(token)
        elif token[0].isalpha():
            out.append(f"(?:{_as_regex(token, rules, (*seen, name))})")
        elif token in "()|?*+" or token.startswith("{"):
            out.append("(?:" if token == "(" else token)
        else:
            raise ValueError(f"the simulator does not read {token!r} in grammar rule {name!r}")
    return "".join(out)
