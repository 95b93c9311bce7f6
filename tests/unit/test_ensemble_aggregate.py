"""Ensemble expansion and the aggregators (pure)."""
import numpy as np
import pytest

from mpiswarm.aggregate import Vote, concat, failure_counts, majority_vote
from mpiswarm.ensemble import expand
from mpiswarm.inputs import PromptSet


def test_expand_gives_every_prompt_to_every_rank_k_times_with_its_own_seed():
    ps = PromptSet("in.jsonl", ["a", "b"], ["x", "y"], ["", '{"max_tokens":3,"seed":9}'])
    rows, plan = expand(ps, n_ranks=3, repeat=2, base_seed=10)
    assert len(rows) == plan.n_rows == 12
    assert rows.prompts == ["a"] * 6 + ["b"] * 6
    assert rows.custom_ids[:3] == ["x/rank-0/rep-0", "x/rank-0/rep-1", "x/rank-1/rep-0"]
    assert plan.rank().tolist() == [0, 0, 1, 1, 2, 2] * 2
    assert plan.seed().tolist() == [10, 11, 12, 13, 14, 15] * 2
    assert rows.overrides[7] == '{"max_tokens":3,"seed":11}'  # the row's own options stay, the seed is the ensemble's
    order, counts = plan.rank_order(np.array([0, 3, 5, 6, 11]))
    assert order.tolist() == [0, 6, 3, 5, 11] and counts.tolist() == [2, 1, 2]


def test_majority_vote_ignores_case_and_space_and_leaves_failures_out():
    vote = majority_vote(["Yes", " yes\n", "No", "", "no"], ok=[True, True, True, False, True])
    assert vote == Vote(answer="Yes", share=0.5, votes=2, n_valid=4, n_failed=1)
    assert majority_vote([{"completion": "a", "ok": True}, {"completion": "b", "ok": False}]).share == 1.0
    assert majority_vote([], ok=[]) == Vote("", 0.0, 0, 0, 0)


def test_ties_go_to_the_answer_seen_first():
    assert majority_vote(["b", "a", "a", "b"]).answer == "b"


def test_concat_and_failure_counts():
    assert concat(["a", "b", "c"], ok=[True, False, True], separator="|") == "a|c"
    records = [{"ok": True, "error": ""}, {"ok": False, "error": "HTTP 400: x"}, {"ok": False, "error": "HTTP 400: x"}]
    assert failure_counts(records) == {"total": 3, "ok": 1, "failed": 2, "errors": {"HTTP 400: x": 2}}


def test_api_rejects_unknown_keywords_and_bad_sampling():
    api = pytest.importorskip("mpiswarm.api")
    with pytest.raises(TypeError, match="no_such"):
        api.build_config("in", "out", model="m", no_such=1)
    with pytest.raises(ValueError, match="temperature"):
        api.build_config("in", "out", model="m", temperature=-1)
    config = api.build_config("in", "out", model="m", temperature=0.5, batch_size=8, schedule="static")
    assert (config.prompts.sampling, config.client.batch_size, config.schedule.mode) == ({"temperature": 0.5, "max_tokens": 256}, 8, "static")


def test_api_max_prompts_per_call_and_vllms_sampling_rules():
    api = pytest.importorskip("mpiswarm.api")
    assert api.build_config("in", "out", model="m").client.max_prompts_per_call == 1024
    config = api.build_config("in", "out", model="m", max_prompts_per_call=256)
    assert config.client.max_prompts_per_call == 256 and config.params()["max_prompts_per_call"] == 256
    with pytest.raises(ValueError, match="greedy"):
        api.build_config("in", "out", model="m", temperature=0, n=2)
    with pytest.raises(ValueError, match="top_p"):
        api.build_config("in", "out", model="m", top_p=0)
