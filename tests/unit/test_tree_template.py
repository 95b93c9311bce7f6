"""Pure parts of the tree reduction and of prompt templates."""
import pytest

from mpiswarm.budget import estimate_tokens, room_for_output
from mpiswarm.template import check, placeholders, render, unescape
from mpiswarm.tree import MARKER, check_reduce_template, group_inputs, level_sizes, shorten, supervisor_prompt


@pytest.mark.parametrize("n, fanin, sizes", [
    (64, 4, [16, 4, 1]), (48, 4, [12, 3, 1]), (65, 4, [17, 5, 2, 1]), (1, 4, []), (0, 4, []),
    (2, 8, [1]), (10_000, 50, [200, 4, 1]),
])
def test_level_sizes_depend_only_on_answers_and_fanin(n, fanin, sizes):
    assert level_sizes(n, fanin) == sizes


def test_fanin_below_two_is_refused():
    with pytest.raises(ValueError, match="fan-in"):
        level_sizes(10, 1)


def test_groups_cover_each_input_once():
    for n_prev in (1, 7, 16, 17):
        covered = [i for g in range(-(-n_prev // 4)) for i in group_inputs(g, 4, n_prev)]
        assert covered == list(range(n_prev))


def test_supervisor_prompt_fills_responses_level_and_group():
    assert supervisor_prompt('L{level} G{group}: {responses} {"k": 1}', ["a", "b"], " | ", 2, 5) \
        == 'L2 G5: a | b {"k": 1}'


def test_render_keeps_other_braces_and_unescapes_doubled_ones():
    assert render('{"a": {x}} {{x}} {not a name} {', {"x": 1}) == '{"a": 1} {x} {not a name} {'
    assert placeholders("{a}{b}{a}{{c}}") == ["a", "b"]
    with pytest.raises(KeyError, match="gene"):
        render("{gene}", {})


def test_template_checks_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"--reduce-prompt: must contain \{responses\}"):
        check_reduce_template("summarise")
    with pytest.raises(ValueError, match=r"unknown placeholder \{lvl\}"):
        check_reduce_template("{responses} {lvl}")
    check("{a}", ("a", "b"), "x")


def test_unescape_turns_typed_escapes_into_characters():
    assert unescape(r"a\nb\tc\\n ü") == "a\nb\tc\\n ü"


def test_shorten_keeps_short_texts_whole_and_cuts_long_ones_at_words():
    texts = ["short", "word " * 100, "x" * 300]
    cut = shorten(texts, 200)
    assert cut[0] == "short"
    assert sum(len(t.split(" [...")[0]) for t in cut) <= 200
    head = MARKER.split("{")[0]
    assert cut[1].split(head)[0].endswith("word") and head in cut[1] and head in cut[2]
    assert "of 500 characters kept]" in cut[1]
    assert shorten(["a", "b"], 10) == ["a", "b"]


def test_token_estimate_is_on_the_safe_side_of_four_bytes_a_token():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd" * 30) == 40  # 120 bytes / 3
    assert estimate_tokens("東京") == 2  # 6 bytes
    assert room_for_output(100, 4096, margin=16) == 3980
