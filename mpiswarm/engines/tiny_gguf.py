#!/usr/bin/env python3
"""Write a tiny random-weight llama GGUF model for tests against a real llama-server.

The model is a 2-layer, 64-wide llama with a SentencePiece-style ("llama")
vocabulary of ~600 pieces: ``<unk>``, ``<s>``, ``</s>``, the chat-role control
tokens, the 256 byte tokens ``<0x00>``..``<0xFF>``, the printable ASCII
characters, and a few hundred English word pieces (``▁the``, ``▁question``,
``ing``...) together with every prefix of them, so that ordinary English text
tokenizes into whole-word pieces.  ``tokenizer.chat_template`` holds a small
Jinja template of the ``<|user|>\\n...<|end|>\\n<|assistant|>\\n`` kind.

Its answers are gibberish, but they are repeatable and never empty:

* One hidden channel (``BIAS_CHANNEL``) is a constant: every token embedding is
  ``BIAS_LEVEL`` there and no layer writes to it (that row of ``attn_output`` and
  ``ffn_down`` is zero), so after the final norm it acts as a bias on the logits.
* Through that channel the output matrix gives every token that is not a
  printable piece (``<unk>``, ``<s>``, ``</s>``, role tokens, byte tokens) a
  large negative logit: greedy decoding never ends a reply on its own, never emits
  invalid UTF-8, and stops only on ``max_tokens``, a stop string or the context
  limit.  Whole-word pieces get a small positive bias, so the output reads as
  words.  The rest of the weights are random, so different prompts get different
  answers.

The file is a pure function of ``seed`` (same bytes every time) and is written
atomically: to a temporary file beside the target, then renamed over it.

Command line::

    python tools/tiny_gguf.py OUT.gguf [--seed S]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import string
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

# ``gguf`` (a test extra) is imported where a model is built, so that the constants here
# (CONTEXT_LENGTH, CHAT_TEMPLATE, ...) import without it.

ARCH = "llama"
N_LAYERS = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
#: ``llama.context_length``: small, so that tests can build an over-long prompt easily.
CONTEXT_LENGTH = 512
RMS_EPS = 1e-5
ROPE_FREQ_BASE = 10000.0

#: The embedding channel that carries a constant and so works as a logit bias.
BIAS_CHANNEL = 0
BIAS_LEVEL = 4.0
#: Output-matrix weights on the bias channel (times ~sqrt(N_EMBD/2) after the norm).
SUPPRESS_WEIGHT = -4.0
WORD_WEIGHT = 0.5

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPACE = "\u2581"  # SentencePiece's "▁", which stands for a space

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

#: Frequent English words, in rough order of frequency; each becomes "▁word".
WORDS = """
the of and to a in is that for it as was with be by on not he I this are or his
from at which but have an had they you were their one all we can her has there
been if more when will would who so no she other its may these about than into
only some could them time what new also two then first any my now such like our
over man me even most made after many must did before years where much your
way well down should because each just those how too little good very make world
still own see men work long get here between both life being under never day
same another know while last might us great old year off come since against go
came right used take three states himself few house use during without again
place around however home small found thought went say part once general high
upon school every does got united left number course war until always away
something fact though water less public put think almost hand enough far took head
yet government system better set told nothing night end why called didn't eyes
find going look asked later knew point next city give group toward young let room
president side social given present several order national second possible rather
per face among form important often things looking early white case large become
big need four within felt children along question answer prompt text word
words story write tell explain describe list name hello Hello The A What How Why
Where When Who Tell Write Explain Please please capital France Paris data model
test tests example sentence language English computer science number numbers
apple red blue green cat dog fox quick brown jumps lazy sun moon star sky
""".split()

#: Pieces without a leading space: word endings and common syllables.
SUFFIXES = """
s es ed ing er ers est ly tion tions ment ness able al ity ive ous ful less ism ist
ize ise ic ical en on an ar or re in it at le ay ow
""".split()


def build_vocab() -> tuple[list[str], list[float], list[int]]:
    """Return ``(tokens, scores, token_types)`` of the tiny SentencePiece vocabulary.

    Ids 0, 1, 2 are ``<unk>``, ``<s>``, ``</s>``; then the role control tokens, the
    256 byte tokens, ``▁``, the printable ASCII characters, and the word pieces with
    all their prefixes (so SentencePiece-style merging can reach every piece).
    Scores rise with piece length, so longer pieces win merges.
    """
    import gguf

    tokens: list[str] = []
    scores: list[float] = []
    types: list[int] = []
    seen: set[str] = set()

    def add(piece: str, score: float, kind: gguf.TokenType) -> None:
        if piece not in seen:
            seen.add(piece)
            tokens.append(piece)
            scores.append(score)
            types.append(int(kind))

    add(UNK, 0.0, gguf.TokenType.UNKNOWN)
    add(BOS, 0.0, gguf.TokenType.CONTROL)
    add(EOS, 0.0, gguf.TokenType.CONTROL)
    for role in ROLE_TOKENS:
        add(role, 0.0, gguf.TokenType.CONTROL)
    for byte in range(256):
        add(f"<0x{byte:02X}>", 0.0, gguf.TokenType.BYTE)

    add(SPACE, -1.0, gguf.TokenType.NORMAL)
    for char in string.ascii_letters + string.digits + string.punctuation:
        add(char, -1.0, gguf.TokenType.NORMAL)

    pieces = [SPACE + word for word in WORDS] + SUFFIXES
    for piece in pieces:
        for end in range(2, len(piece) + 1):
            prefix = piece[:end]
            # Longer pieces score higher; the tiny index term breaks ties stably.
            add(prefix, float(end) - len(tokens) * 1e-6, gguf.TokenType.NORMAL)
    return tokens, scores, types


def _output_bias(tokens: Sequence[str], types: Sequence[int]) -> np.ndarray:
    """Per-token weight on the bias channel of the output matrix."""
    import gguf

    whole_words = {SPACE + word for word in WORDS}
    bias = np.zeros(len(tokens), dtype=np.float32)
    for i, (piece, kind) in enumerate(zip(tokens, types)):
        if kind != gguf.TokenType.NORMAL:
            bias[i] = SUPPRESS_WEIGHT
        elif piece in whole_words:
            bias[i] = WORD_WEIGHT
    return bias


def _tensors(rng: np.random.Generator, tokens: Sequence[str],
             types: Sequence[int]) -> list[tuple[str, np.ndarray]]:
    """The model's tensors, named as llama.cpp expects, shaped (out, in) for matrices."""
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD
    n_embd_kv = head_dim * N_HEAD_KV

    def normal(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def writes_residual(*shape: int, scale: float) -> np.ndarray:
        weight = normal(*shape, scale=scale)
        weight[BIAS_CHANNEL, :] = 0.0  # keep the bias channel constant
        return weight

    token_embd = normal(n_vocab, N_EMBD, scale=1.0)
    token_embd[:, BIAS_CHANNEL] = BIAS_LEVEL

    output = normal(n_vocab, N_EMBD, scale=1.0 / np.sqrt(N_EMBD))
    output[:, BIAS_CHANNEL] = _output_bias(tokens, types)

    ones = np.ones(N_EMBD, dtype=np.float32)
    tensors = [("token_embd.weight", token_embd)]
    for layer in range(N_LAYERS):
        prefix = f"blk.{layer}."
        tensors += [
            (prefix + "attn_norm.weight", ones.copy()),
            (prefix + "attn_q.weight", normal(N_EMBD, N_EMBD, scale=N_EMBD ** -0.5)),
            (prefix + "attn_k.weight", normal(n_embd_kv, N_EMBD, scale=N_EMBD ** -0.5)),
            (prefix + "attn_v.weight", normal(n_embd_kv, N_EMBD, scale=N_EMBD ** -0.5)),
            (prefix + "attn_output.weight", writes_residual(N_EMBD, N_EMBD, scale=N_EMBD ** -0.5)),
            (prefix + "ffn_norm.weight", ones.copy()),
            (prefix + "ffn_gate.weight", normal(N_FF, N_EMBD, scale=N_EMBD ** -0.5)),
            (prefix + "ffn_up.weight", normal(N_FF, N_EMBD, scale=N_EMBD ** -0.5)),
            (prefix + "ffn_down.weight", writes_residual(N_EMBD, N_FF, scale=N_FF ** -0.5)),
        ]
    tensors += [("output_norm.weight", ones.copy()), ("output.weight", output)]
    return tensors


def write_tiny_model(path: os.PathLike[str] | str, seed: int = 0) -> Path:
    """Write the tiny model to ``path`` atomically and return ``path`` as a Path."""
    import gguf

    target = Path(path)
    tokens, scores, types = build_vocab()
    tensors = _tensors(np.random.default_rng(seed), tokens, types)

    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(tmp, ARCH)
        writer.add_name(f"mpiswarm tiny llama (seed {seed})")
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        writer.add_vocab_size(len(tokens))
        writer.add_context_length(CONTEXT_LENGTH)
        writer.add_embedding_length(N_EMBD)
        writer.add_block_count(N_LAYERS)
        writer.add_feed_forward_length(N_FF)
        writer.add_head_count(N_HEAD)
        writer.add_head_count_kv(N_HEAD_KV)
        writer.add_rope_dimension_count(N_EMBD // N_HEAD)
        writer.add_rope_freq_base(ROPE_FREQ_BASE)
        writer.add_layer_norm_rms_eps(RMS_EPS)

        writer.add_tokenizer_model("llama")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_unk_token_id(tokens.index(UNK))
        writer.add_bos_token_id(tokens.index(BOS))
        writer.add_eos_token_id(tokens.index(EOS))
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.add_add_space_prefix(True)
        writer.add_chat_template(CHAT_TEMPLATE)

        for name, array in tensors:
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates the file private (0600)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight llama GGUF model.")
    parser.add_argument("out", type=Path, help="where to write the .gguf file")
    parser.add_argument("--seed", type=int, default=0,
                        help="random seed of the weights (default 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    try:
        path = write_tiny_model(args.out, seed=args.seed)
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
