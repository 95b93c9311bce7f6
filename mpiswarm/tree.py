"""The shape of a tree reduction and its supervisor prompts (pure: no MPI, no network).

Level 0 is the answers in input order (row-major when a row has several choices). Level L
groups consecutive outputs of level L-1 in chunks of ``fanin``: group *g* combines inputs
``[g * fanin, min((g + 1) * fanin, n_prev))``. The shape depends only on the number of
answers and the fan-in, never on the number of ranks, so a deterministic engine gives the
same final answer on any number of ranks.
"""
from __future__ import annotations

from .template import check, render

#: placeholders a supervisor template may use
REDUCE_PLACEHOLDERS = ("responses", "level", "group")
DEFAULT_JOINER = "\n---\n"
#: appended where an input was shortened to fit the model's context
MARKER = " [... shortened by mpiswarm: {kept} of {total} characters kept]"


def level_sizes(n_answers: int, fanin: int) -> list[int]:
    """Outputs of levels 1, 2, …: 64 answers with fan-in 4 give ``[16, 4, 1]``; one answer
    (or none) needs no level."""
    if fanin < 2:
        raise ValueError(f"fan-in must be >= 2, got {fanin}")
    sizes = []
    size = n_answers
    while size > 1:
        size = -(-size // fanin)
        sizes.append(size)
    return sizes


def group_inputs(group: int, fanin: int, n_prev: int) -> range:
    """The inputs (outputs of the level below) that ``group`` combines."""
    return range(group * fanin, min((group + 1) * fanin, n_prev))


def check_reduce_template(template: str) -> None:
    """ValueError unless ``template`` holds ``{responses}`` and no unknown placeholder."""
    check(template, REDUCE_PLACEHOLDERS, "--reduce-prompt", required=("responses",))


def supervisor_prompt(template: str, texts: list[str], joiner: str, level: int, group: int) -> str:
    """The prompt asking a model to combine ``texts`` (group ``group`` of ``level``)."""
    return render(template, {"responses": joiner.join(texts), "level": level, "group": group})


def _cut(text: str, keep: int) -> str:
    """``text`` cut to at most ``keep`` characters at a word boundary, with the marker."""
    if len(text) <= keep:
        return text
    head = text[:keep]
    space = max(head.rfind(" "), head.rfind("\n"))
    if space >= keep * 3 // 4:  # end on a whole word unless that throws away a quarter
        head = head[:space]
    return head.rstrip() + MARKER.format(kept=len(head.rstrip()), total=len(text))


def shorten(texts: list[str], total_chars: int) -> list[str]:
    """Cut ``texts`` so that together they keep about ``total_chars`` characters: short texts
    stay whole and leave their unused share to the long ones (water filling); each long text
    is cut at a word boundary and ends with a visible :data:`MARKER`."""
    if sum(len(t) for t in texts) <= total_chars:
        return list(texts)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    keep = {}
    left, remaining = max(0, total_chars), len(texts)
    for i in order:
        share = left // remaining
        keep[i] = min(len(texts[i]), share)
        left -= keep[i]
        remaining -= 1
    return [_cut(t, keep[i]) for i, t in enumerate(texts)]
