"""Replies that do not answer every row are retried, not failed (issue 16, item 2; no MPI).

Placement keeps what a reply did answer and says why each other row is unanswered; the
dispatcher sends those rows again under the retry policy (its sleep injected) against
simulated endpoints that spoil replies (``--error-kinds missing-choice,…``), and fails them
only when the attempts are spent.
"""
import numpy as np
import pytest

from mpiswarm.client import BadReply, place_chat, place_completions
from mpiswarm.records import ResultColumns
from mpiswarm.retry import RetryPolicy
from mpiswarm.sim import BAD_REPLY_KINDS, SimConfig, run_in_thread, spoil_reply

from .test_faults_units import PROMPTS, dispatch, expected
from .test_records_client_store import choices


@pytest.mark.parametrize("rows", [range(3), [0, 1, 2]])  # the contiguous fast path and the general one
def test_missing_choice_leaves_its_row_pending_not_failed(rows):
    res = ResultColumns.pending(np.arange(3), n=1, rank=0)
    data = choices(["a", "b", "c"])
    del data["choices"][1]
    assert place_completions(data, rows, 1, res, 0.1) == 2
    assert res.ok.tolist() == [True, False, True] and res.done.tolist() == [True, False, True]
    assert res.error[1] == "response carried no choice for this prompt"


@pytest.mark.parametrize("rows", [range(3), [0, 1, 2]])
@pytest.mark.parametrize("spoil, row_error", [
    (lambda c: c.append(dict(c[0], text="other")), "choice index 0 repeated"),
    (lambda c: c[0].update(index=9), "response carried no choice for this prompt"),
    (lambda c: c[0].update(index="0"), "response carried no choice for this prompt"),
    (lambda c: c[0].pop("text"), "choice 0 carried no text"),
    (lambda c: c[0].update(text=None), "choice 0 carried no text"),
])
def test_bad_choice_spoils_its_row_and_raises_after_placing_the_others(rows, spoil, row_error):
    res = ResultColumns.pending(np.arange(3), n=1, rank=0)
    data = choices(["a", "b", "c"])
    spoil(data["choices"])
    with pytest.raises(BadReply) as err:
        place_completions(data, rows, 1, res, 0.1)
    assert err.value.placed
    assert res.ok.tolist() == [False, True, True] and not res.done[0]
    assert res.completion[1:] == ["b/0", "c/0"] and res.error[0] == row_error


@pytest.mark.parametrize("data", [{"object": "list", "data": []}, [], "text", {"choices": None}])
def test_reply_that_is_not_a_completion_is_a_bad_reply(data):
    res = ResultColumns.pending(np.arange(2), n=1, rank=0)
    with pytest.raises(BadReply, match="not a completion") as err:
        place_completions(data, range(2), 1, res, 0.1)
    assert not err.value.placed and not res.done.any()


def test_chat_reply_short_of_choices_or_repeating_one():
    res = ResultColumns.pending(np.arange(1), n=2, rank=0)
    one = {"choices": [{"index": 0, "message": {"content": "A"}, "finish_reason": "stop"}]}
    assert place_chat(one, 0, 2, res, 0.1) == 0 and not res.done[0]
    with pytest.raises(BadReply):
        place_chat({"choices": one["choices"] * 2}, 0, 2, res, 0.1)
    with pytest.raises(BadReply):
        place_chat({"choices": [{"index": 0}]}, 0, 1, res, 0.1)


def test_spoil_reply_kinds():
    reply = choices(["a", "b"])
    assert [c["index"] for c in spoil_reply(reply, "missing-choice")["choices"]] == [1]
    assert [c["index"] for c in spoil_reply(reply, "dup-choice")["choices"]] == [0, 1, 0]
    assert "text" not in spoil_reply(choices(["a"]), "no-text")["choices"][0]


@pytest.mark.parametrize("kinds", [BAD_REPLY_KINDS] + [(k,) for k in BAD_REPLY_KINDS])
def test_bad_replies_are_sent_again_and_every_row_is_answered(kinds):
    config = SimConfig(time_scale=0, error_rate=0.3, error_kinds=kinds, fault_seed=4)
    with run_in_thread(config) as sim:
        results, stats, finished, delays, dead = dispatch(sim.urls, PROMPTS, batch_size=5)
        faults = sum(sim.stats(0)["faults"].values())
    assert results.ok.all() and results.completion == expected(PROMPTS), results.error
    assert finished == list(range(40)) and not dead
    assert stats.n_bad_replies == faults == stats.n_retries == len(delays) > 0
    assert stats.n_failed_calls == 0 and stats.n_failovers == 0


def test_rows_a_reply_keeps_missing_fail_when_the_attempts_are_spent():
    config = SimConfig(time_scale=0, error_rate=1.0, error_kinds=("missing-choice",))
    with run_in_thread(config) as sim:
        results, stats, finished, delays, dead = dispatch(sim.urls, PROMPTS[:8], batch_size=4,
                                                          policy=RetryPolicy(max_attempts=3))
    # each call's first prompt is missing from every reply: the others are answered at once
    assert np.flatnonzero(~results.ok).tolist() == [0, 4] and results.done.all()
    for row in (0, 4):
        assert results.error[row] == "bad reply after 3 attempts: response carried no choice for this prompt"
    assert [results.completion[i] for i in (1, 2, 3, 5, 6, 7)] == expected([PROMPTS[i] for i in (1, 2, 3, 5, 6, 7)])
    assert finished == list(range(8)) and not dead
    assert stats.n_bad_replies == 6 and len(delays) == 4  # 3 replies per call, 2 backoffs each


def test_body_not_json_fails_with_what_was_wrong_once_spent():
    config = SimConfig(time_scale=0, error_rate=1.0, error_kinds=("not-json",))
    with run_in_thread(config) as sim:
        results, stats, _, _, dead = dispatch(sim.urls, PROMPTS[:4], batch_size=4, policy=RetryPolicy(max_attempts=2))
    assert not results.ok.any() and results.done.all() and not dead
    assert all(e.startswith("bad reply after 2 attempts: reply is not JSON") for e in results.error)
