"""mpiswarm.options: every rule of the table, an accepted and a refused case each.

The case lists are shared with ``tests/vllm/test_options_vllm.py``, which sends each to vLLM
0.32's own server: REFUSED must be refused there too (400), ACCEPTED accepted (200), and
STRICTER (refused here, taken by vLLM's lax pydantic models or ignored) is held as what vLLM
does, so a change on either side shows.

A case is (route, options, what the one-line message contains); route ``both`` is a case for
each route.
"""
from __future__ import annotations

import pytest

from mpiswarm.inputs import validate_sampling
from mpiswarm.options import CHAT, COMPLETIONS, OPTIONS, ROUTES, conflict, known, option_name, validate

BOTH = "both"
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
JSON_SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}

REFUSED = [
    (BOTH, {"max_tokens": 0}, "'max_tokens' must be an integer >= 1"),
    (BOTH, {"n": 0}, "'n' must be an integer in [1, 16384]"),
    (BOTH, {"n": 16385}, "'n' must be an integer in [1, 16384]"),
    (BOTH, {"seed": 2**63}, "'seed' must be an integer in [-9223372036854775808, 9223372036854775807]"),
    (BOTH, {"temperature": 2.5}, "'temperature' must be a number in [0, 2] (vLLM's range), got 2.5"),
    (BOTH, {"temperature": -0.1}, "'temperature' must be a number in [0, 2]"),
    (BOTH, {"top_p": 0}, "'top_p' must be a number in (0, 1]"),
    (BOTH, {"top_p": 1.01}, "'top_p' must be a number in (0, 1]"),
    (BOTH, {"stop": [""]}, "'stop' must be a non-empty string or a list of them"),
    (BOTH, {"stop": 5}, "'stop' must be a non-empty string or a list of them"),
    (BOTH, {"stop": ["a", "b", "c", "d", "e"]}, "'stop' must be at most 4 strings"),
    (BOTH, {"top_k": -2}, "'top_k' must be an integer >= -1"),
    (BOTH, {"top_k": 1.5}, "'top_k' must be an integer >= -1"),
    (BOTH, {"top_k": "abc"}, "'top_k' must be an integer >= -1"),
    (BOTH, {"min_p": 1.5}, "'min_p' must be a number in [0, 1]"),
    (BOTH, {"min_p": -0.1}, "'min_p' must be a number in [0, 1]"),
    (BOTH, {"repetition_penalty": 0}, "'repetition_penalty' must be a number > 0"),
    (BOTH, {"repetition_penalty": -1}, "'repetition_penalty' must be a number > 0"),
    (BOTH, {"presence_penalty": 2.5}, "'presence_penalty' must be a number in [-2, 2]"),
    (BOTH, {"frequency_penalty": -2.01}, "'frequency_penalty' must be a number in [-2, 2]"),
    (BOTH, {"min_tokens": -1}, "'min_tokens' must be an integer >= 0"),
    (BOTH, {"min_tokens": 4, "max_tokens": 3}, "'min_tokens' must be at most 'max_tokens' (3), got 4"),
    (CHAT, {"max_completion_tokens": 0}, "'max_completion_tokens' must be an integer >= 1"),
    (CHAT, {"min_tokens": 4, "max_tokens": 9, "max_completion_tokens": 3},
     "'min_tokens' must be at most 'max_completion_tokens' (3), got 4"),
    (BOTH, {"ignore_eos": 2}, "'ignore_eos' must be true or false"),
    (BOTH, {"ignore_eos": "x"}, "'ignore_eos' must be true or false"),
    (BOTH, {"include_stop_str_in_output": 3}, "'include_stop_str_in_output' must be true or false"),
    (BOTH, {"skip_special_tokens": 3}, "'skip_special_tokens' must be true or false"),
    (BOTH, {"stop_token_ids": [-1]}, "'stop_token_ids' must be a list of token ids"),
    (BOTH, {"stop_token_ids": [1.5]}, "'stop_token_ids' must be a list of token ids"),
    (BOTH, {"stop_token_ids": "5"}, "'stop_token_ids' must be a list of token ids"),
    (BOTH, {"logit_bias": {"a": 1}}, "'logit_bias': key 'a' is not a token id"),
    (BOTH, {"logit_bias": {"-1": 1}}, "'logit_bias': key '-1' is not a token id"),
    (BOTH, {"logit_bias": {"5": "x"}}, "'logit_bias': the bias of token 5 must be a number"),
    (BOTH, {"logit_bias": [1]}, "'logit_bias' must be an object"),
    (COMPLETIONS, {"logprobs": -2}, "'logprobs' must be an integer in [0, 20] on /v1/completions"),
    (COMPLETIONS, {"logprobs": -1}, "'logprobs' must be an integer in [0, 20]"),
    (COMPLETIONS, {"logprobs": 21}, "'logprobs' must be an integer in [0, 20]"),
    (COMPLETIONS, {"logprobs": 1.5}, "'logprobs' must be an integer in [0, 20]"),
    (COMPLETIONS, {"logprobs": "1"}, "'logprobs' must be an integer in [0, 20]"),
    (CHAT, {"logprobs": 20}, "'logprobs' must be true or false on /v1/chat/completions"),
    (CHAT, {"logprobs": -1}, "'logprobs' must be true or false"),
    (CHAT, {"logprobs": 1.5}, "'logprobs' must be true or false"),
    (CHAT, {"top_logprobs": 3}, "'top_logprobs' needs 'logprobs' true"),
    (CHAT, {"top_logprobs": 3, "logprobs": False}, "'top_logprobs' needs 'logprobs' true"),
    (CHAT, {"logprobs": True, "top_logprobs": 21}, "'top_logprobs' must be an integer in [0, 20]"),
    (CHAT, {"logprobs": True, "top_logprobs": -1}, "'top_logprobs' must be an integer in [0, 20]"),
    (CHAT, {"logprobs": True, "top_logprobs": 1.5}, "'top_logprobs' must be an integer in [0, 20]"),
    (CHAT, {"logprobs": True, "top_logprobs": "2"}, "'top_logprobs' must be an integer in [0, 20]"),
    (BOTH, {"structured_outputs": {}}, "'structured_outputs' must set exactly one of json, regex, choice, "
                                       "grammar, json_object, got none"),
    (BOTH, {"structured_outputs": {"choice": ["a"], "regex": "a+"}}, "exactly one of"),
    (BOTH, {"structured_outputs": {"choice": ["a"], "grammar": 'root ::= "a"'}}, "got choice, grammar"),
    (BOTH, {"structured_outputs": {"choice": ["a"], "json_object": True}}, "got choice, json_object"),
    (BOTH, {"structured_outputs": {"choice": []}}, "'structured_outputs': 'choice' must be a non-empty list"),
    (BOTH, {"structured_outputs": {"choice": "yes"}}, "'choice' must be a non-empty list of strings"),
    (BOTH, {"structured_outputs": {"choice": [1, 2]}}, "'choice' must be a non-empty list of strings"),
    (BOTH, {"structured_outputs": {"json_object": False}}, "'structured_outputs': 'json_object' must be true"),
    (BOTH, {"structured_outputs": {"json": "not json"}}, "'structured_outputs': 'json' must be a JSON schema"),
    (BOTH, {"structured_outputs": {"json": ""}}, "'json' must be a JSON schema"),
    (BOTH, {"structured_outputs": {"json": 5}}, "'json' must be a JSON schema"),
    (BOTH, {"structured_outputs": {"json": "5"}}, "'json' must be a JSON schema"),
    (BOTH, {"structured_outputs": {"regex": 5}}, "'structured_outputs': 'regex' must be a string"),
    (BOTH, {"structured_outputs": {"grammar": ""}}, "'structured_outputs': 'grammar' must be a non-empty string"),
    (BOTH, {"structured_outputs": {"grammar": 5}}, "'grammar' must be a non-empty string"),
    (BOTH, {"response_format": {"type": "json_schema"}}, "'response_format': type json_schema needs"),
    (BOTH, {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "type json_schema needs"),
    (BOTH, {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}, "type json_schema needs"),
    (BOTH, {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}},
     "type json_schema needs"),
    (BOTH, {"response_format": {"type": "json_schema", "json_schema": {"name": 5, "schema": {}}}},
     "type json_schema needs"),
    (BOTH, {"response_format": {"type": "bogus"}}, "'response_format' must be an object whose 'type' is one of"),
    (BOTH, {"response_format": "json"}, "'response_format' must be an object"),
    (BOTH, {"response_format": {"type": "json_object"}, "structured_outputs": {"choice": ["a"]}},
     "'response_format' json_object and 'structured_outputs' are two structured outputs"),
    (BOTH, {"response_format": JSON_SCHEMA, "structured_outputs": {"choice": ["a"]}},
     "'response_format' json_schema and 'structured_outputs' are two"),
    (BOTH, {"temperature": 0, "n": 2}, "'n' must be 1 when using greedy sampling ('temperature' 0), got 2"),
    (BOTH, {"model": 5}, "'model' must be a non-empty string"),
]

#: refused here, answered 500 by vLLM (it calls .get on the string)
VLLM_500 = [
    (BOTH, {"structured_outputs": "x"}, "'structured_outputs' must be an object"),
]

#: refused here, and no request can carry them: extra_body's fields are merged into the body
UNSENDABLE = [
    (BOTH, {"extra_body": "x"}, "'extra_body' must be an object"),
    (BOTH, {"extra_body": [1]}, "'extra_body' must be an object"),
]

#: refused here, taken by vLLM 0.32 (lax coercion, or a key it ignores): held as vLLM's 200
STRICTER = [
    (BOTH, {"top_k": "5"}, "'top_k' must be an integer"),
    (BOTH, {"top_k": True}, "'top_k' must be an integer"),
    (BOTH, {"max_tokens": 2.0}, "'max_tokens' must be an integer"),
    (BOTH, {"n": "2"}, "'n' must be an integer"),
    (BOTH, {"temperature": True}, "'temperature' must be a number"),
    (BOTH, {"top_p": True}, "'top_p' must be a number"),
    (BOTH, {"ignore_eos": "true"}, "'ignore_eos' must be true or false"),
    (BOTH, {"ignore_eos": 1}, "'ignore_eos' must be true or false"),
    (BOTH, {"stop_token_ids": [True]}, "'stop_token_ids' must be a list of token ids"),
    (BOTH, {"logit_bias": {"5": "inf"}}, "the bias of token 5 must be a number"),
    (BOTH, {"model": ""}, "'model' must be a non-empty string"),
    (BOTH, {"structured_outputs": {"json_object": "yes"}}, "'json_object' must be true"),
    (BOTH, {"structured_outputs": {"choice": ["a"], "bogus": 1}}, "'structured_outputs': unknown key 'bogus'"),
    (BOTH, {"response_format": JSON_SCHEMA, "structured_outputs": {"json": {"type": "string"}}},
     "are two structured outputs"),
    (COMPLETIONS, {"logprobs": True}, "'logprobs' must be an integer"),
    (COMPLETIONS, {"top_logprobs": 3}, "'top_logprobs' is not an option of /v1/completions"),
    (COMPLETIONS, {"max_completion_tokens": 3}, "'max_completion_tokens' is not an option of /v1/completions"),
    (CHAT, {"logprobs": 1}, "'logprobs' must be true or false"),
    (CHAT, {"logprobs": "1"}, "'logprobs' must be true or false"),
]

#: accepted by both, as they are (``extra_body`` is merged into the body, as the openai client does)
ACCEPTED = [
    (BOTH, {"max_tokens": 1, "n": 4, "temperature": 0.7, "seed": -(2**63)}),
    (BOTH, {"seed": -1, "top_p": 1, "temperature": 2}),
    (BOTH, {"temperature": 0.001, "n": 2}),
    (BOTH, {"temperature": 0, "n": 1}),
    (BOTH, {"stop": ["a", "b", "c", "d"]}),
    (BOTH, {"stop": "x"}),
    (BOTH, {"top_k": 0}),
    (BOTH, {"top_k": -1}),
    (BOTH, {"top_k": 5, "min_p": 1}),
    (BOTH, {"min_p": 0}),
    (BOTH, {"repetition_penalty": 0.01}),
    (BOTH, {"presence_penalty": -2, "frequency_penalty": 2}),
    (BOTH, {"min_tokens": 3, "max_tokens": 3}),
    (CHAT, {"max_completion_tokens": 2}),
    (CHAT, {"min_tokens": 4, "max_tokens": 3, "max_completion_tokens": 5}),
    (BOTH, {"min_tokens": 0}),
    (BOTH, {"ignore_eos": True, "include_stop_str_in_output": False, "skip_special_tokens": False}),
    (BOTH, {"stop_token_ids": [5]}),
    (BOTH, {"stop_token_ids": []}),
    (BOTH, {"logit_bias": {"5": 500}}),
    (BOTH, {"logit_bias": {"5": -1.5, "7": 0}}),
    (COMPLETIONS, {"logprobs": 20}),
    (COMPLETIONS, {"logprobs": 0}),
    (CHAT, {"logprobs": True, "top_logprobs": 20}),
    (CHAT, {"logprobs": True}),
    (CHAT, {"logprobs": False, "top_logprobs": 0}),
    (BOTH, {"structured_outputs": {"choice": ["yes", "no"]}}),
    (BOTH, {"structured_outputs": {"choice": ["a"], "regex": None, "disable_any_whitespace": True}}),
    (BOTH, {"structured_outputs": {"regex": "[ab]{3}"}}),
    (BOTH, {"structured_outputs": {"regex": ""}}),
    (BOTH, {"structured_outputs": {"grammar": 'root ::= "yes" | "no"'}}),
    (BOTH, {"structured_outputs": {"json": SCHEMA}}),
    (BOTH, {"structured_outputs": {"json": '{"type": "integer"}'}}),
    (BOTH, {"structured_outputs": {"json_object": True}}),
    (BOTH, {"response_format": {"type": "text"}}),
    (BOTH, {"response_format": {"type": "json_object"}}),
    (BOTH, {"response_format": JSON_SCHEMA}),
    (BOTH, {"response_format": {"type": "text"}, "structured_outputs": {"choice": ["a"]}}),
    (BOTH, {"model": "tiny"}),
    (BOTH, {"extra_body": {"top_k": 5}}),
    (BOTH, {"extra_body": {}}),
]


def per_route(cases):
    """Each case once a route it is for: (route, *rest)."""
    return [(route, *rest) for case_route, *rest in cases
            for route in ((COMPLETIONS, CHAT) if case_route == BOTH else (case_route,))]


def case_id(case) -> str:
    route, options, *_ = case
    return f"{route}-{options}"[:90]


@pytest.mark.parametrize("case", per_route(REFUSED + VLLM_500 + STRICTER + UNSENDABLE), ids=case_id)
def test_refused_with_one_line_naming_the_option(case):
    route, options, message = case
    with pytest.raises(ValueError) as err:
        validate(options, route)
    text = str(err.value)
    assert message in text
    assert "\n" not in text and len(text) < 200, text
    assert any(f"'{key}'" in text for key in options), text


@pytest.mark.parametrize("case", per_route(ACCEPTED), ids=case_id)
def test_accepted_as_it_is(case):
    route, options = case
    expected = {**options, "stop": [options["stop"]]} if isinstance(options.get("stop"), str) else options
    assert validate(options, route) == expected


def test_every_option_of_the_table_has_a_refused_and_an_accepted_case():
    refused = {key for _, options, _ in REFUSED + VLLM_500 + STRICTER + UNSENDABLE for key in options}
    accepted = {key for _, options in ACCEPTED for key in options}
    assert set(OPTIONS) <= refused, set(OPTIONS) - refused
    assert set(OPTIONS) - {"top_logprobs"} <= accepted  # top_logprobs: with logprobs, accepted too
    assert "top_logprobs" in accepted


def test_none_is_dropped_and_stop_becomes_a_list():
    assert validate({"stop": "x", "seed": None, "top_k": None, "n": 2}, COMPLETIONS) == {"stop": ["x"], "n": 2}


def test_an_unknown_option_lists_the_known_ones_of_the_route():
    with pytest.raises(ValueError) as err:
        validate({"top_kk": 3}, COMPLETIONS)
    text = str(err.value)
    assert text.startswith("unknown option 'top_kk'; known: max_tokens, n, seed,")
    assert "top_k" in text and "structured_outputs" in text and "top_logprobs" not in text
    with pytest.raises(ValueError, match="top_logprobs"):
        validate({"bogus": 1}, CHAT)
    with pytest.raises(ValueError, match="unknown route"):
        validate({}, "embeddings")


def test_the_command_line_names_options_as_flags():
    with pytest.raises(ValueError) as err:
        validate({"top_k": -2}, COMPLETIONS, option_name)
    assert str(err.value) == "--top-k must be an integer >= -1, got -2"
    with pytest.raises(ValueError) as err:
        validate({"min_tokens": 9, "max_tokens": 4}, CHAT, option_name)
    assert str(err.value) == "--min-tokens must be at most --max-tokens (4), got 9"
    with pytest.raises(ValueError) as err:
        validate({"top_logprobs": 2}, COMPLETIONS, option_name)
    assert str(err.value) == "--top-logprobs is not an option of /v1/completions (only of /v1/chat/completions)"


def test_conflict_of_options_merged_from_two_places():
    """A row's options over the command line's: each valid alone, refused together."""
    def name(key):
        return f"'{key}'" if key == "min_tokens" else f"--{key.replace('_', '-')} (command line)"

    assert conflict({"min_tokens": 5, "max_tokens": 4}, COMPLETIONS, name) == (
        "'min_tokens' must be at most --max-tokens (command line) (4), got 5")
    assert conflict({"min_tokens": 4, "max_tokens": 4}, COMPLETIONS) is None
    assert conflict({"top_logprobs": 2, "logprobs": True}, CHAT) is None
    assert conflict({"top_logprobs": 2}, CHAT) == "'top_logprobs' needs 'logprobs' true"


def test_the_table_knows_its_routes():
    assert set(ROUTES) == {COMPLETIONS, CHAT}
    assert "top_logprobs" in known(CHAT) and "top_logprobs" not in known(COMPLETIONS)
    assert all(option.kind and option.rule and option.routes for option in OPTIONS.values())


def test_validate_sampling_keeps_to_its_six():
    assert validate_sampling({"stop": "x", "seed": None, "n": 2}) == {"stop": ["x"], "n": 2}
    with pytest.raises(ValueError, match="unknown sampling option 'top_k'"):
        validate_sampling({"top_k": 5})
    with pytest.raises(ValueError, match="'stop' must be at most 4 strings"):
        validate_sampling({"stop": list("abcde")})
