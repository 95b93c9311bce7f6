#!/usr/bin/env python3
"""Write a tiny random-weight Hugging Face llama model for tests against vLLM's own server.

No model can be downloaded here, so the real-vLLM tier makes its own, in seconds:

* a byte-level BPE tokenizer (``tokenizers``) trained on ``tiny_corpus.txt`` beside this file,
  vocabulary ``VOCAB_SIZE``, with the special tokens ``<s>``, ``</s>`` and the chat-role tokens
  ``<|system|>``, ``<|user|>``, ``<|assistant|>``, ``<|end|>``;
* a chat template of the ``<|user|>\\n…<|end|>\\n<|assistant|>\\n`` kind (``CHAT_TEMPLATE``);
* a 2-layer llama, width 128, head size 64 (``transformers``' ``LlamaForCausalLM``), written
  as safetensors in bfloat16 (~1 MB).

Its answers are gibberish, but repeatable and never empty, and they contain NULs:

* Embedding channel ``BIAS_CHANNEL`` holds a constant that no layer writes to (that row of
  ``o_proj`` and ``down_proj`` is zero), so after the final norm it acts as a bias on the
  logits (the same construction as ``tiny_gguf.py``).
* Through it, the end-of-sequence and role tokens get a large negative logit: a reply never
  ends on its own (chat answers are not empty), only at ``max_tokens`` or a stop string.
* Tokens of whitespace alone are suppressed like EOS, so that an answer held to a JSON schema
  closes (xgrammar allows whitespace between its tokens, and a random model would fill the
  answer with it).
* The token of byte 0x00 (U+0000 once decoded) gets a positive bias, so that a fair share
  of answers carry a NUL, the character real models emit and HDF5's strings refuse.

The directory is a pure function of ``seed`` (the same files every time) and is written
atomically: into a temporary directory beside the target, which is then renamed.

It needs ``torch``, ``transformers`` and ``tokenizers`` (the Python of the vLLM environment
has all three: ``tools/vllm_server.py python``).

Command line::

    VLLM_PYTHON mpiswarm/engines/tiny_hf.py OUT_DIR [--seed S]     (or tools/tiny_hf.py)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

CORPUS = Path(__file__).resolve().parent / "tiny_corpus.txt"

VOCAB_SIZE = 1024
HIDDEN = 128
N_LAYERS = 2
N_HEADS = 2  # head size 64, which vLLM's CPU attention supports
INTERMEDIATE = 256
#: ``max_position_embeddings``: vLLM's ``max_model_len`` is at most this.
MAX_POSITIONS = 2048

BOS, EOS = "<s>", "</s>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
SPECIAL_TOKENS = (BOS, EOS, *ROLE_TOKENS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'] | map(attribute='text') | join('') %}{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + text + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

BIAS_CHANNEL = 0
BIAS_LEVEL = 4.0
#: Output-matrix weights on the bias channel (multiplied by ~sqrt(HIDDEN) * BIAS_LEVEL / |x|
#: after the final norm, i.e. by about 1.3 here).
SUPPRESS_WEIGHT = -8.0
NUL_WEIGHT = 0.5


def train_tokenizer(seed: int):  # -> tokenizers.Tokenizer
    """A byte-level BPE tokenizer trained on the shipped corpus (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train([str(CORPUS)], trainer)
    return tokenizer


def nul_token(tokenizer) -> int:
    """The id of the byte-level token of byte 0x00 (GPT-2's byte-to-unicode maps it to 'Ā')."""
    return tokenizer.token_to_id("\u0100")


def build_model(tokenizer, seed: int):  # -> transformers.LlamaForCausalLM
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = tokenizer.get_vocab_size()
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=N_LAYERS, num_attention_heads=N_HEADS, num_key_value_heads=N_HEADS,
        max_position_embeddings=MAX_POSITIONS, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=tokenizer.token_to_id(BOS), eos_token_id=tokenizer.token_to_id(EOS),
        torch_dtype="bfloat16")
    generator = torch.Generator().manual_seed(seed)

    def normal(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=generator) * scale

    model = LlamaForCausalLM(config)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith("norm.weight"):
            state[name] = torch.ones_like(tensor)
        else:
            fan_in = tensor.shape[-1]
            state[name] = normal(*tensor.shape, scale=fan_in ** -0.5)
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            state[name][BIAS_CHANNEL, :] = 0.0  # keep the bias channel constant
    embed = "model.embed_tokens.weight"
    state[embed] = normal(vocab, HIDDEN, scale=1.0)
    state[embed][:, BIAS_CHANNEL] = BIAS_LEVEL
    bias = torch.zeros(vocab)
    for token in SPECIAL_TOKENS:
        bias[tokenizer.token_to_id(token)] = SUPPRESS_WEIGHT
    bias[nul_token(tokenizer)] = NUL_WEIGHT
    for token_id in range(vocab):  # whitespace alone: a JSON-schema answer would be newlines to the end
        text = tokenizer.decode([token_id])
        if text and text.isspace():
            bias[token_id] = SUPPRESS_WEIGHT
    state["lm_head.weight"][:, BIAS_CHANNEL] = bias
    model.load_state_dict(state)
    return model.to(torch.bfloat16)


@contextlib.contextmanager
def atomic_directory(path: os.PathLike[str] | str) -> Iterator[Path]:
    """A new directory to fill, in the same directory as ``path``, that becomes ``path``
    (replacing one there) when the block ends without an error, and is removed otherwise."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield work
        os.chmod(work, 0o755)  # mkdtemp makes it private
        if target.exists():
            shutil.rmtree(target)
        os.rename(work, target)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def write_tiny_model(path: os.PathLike[str] | str, seed: int = 0) -> Path:
    """Write the model directory to ``path`` atomically (replacing one there) and return it."""
    from transformers import PreTrainedTokenizerFast

    with atomic_directory(path) as work:
        tokenizer = train_tokenizer(seed)
        fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS,
                                       additional_special_tokens=list(ROLE_TOKENS))
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(work)
        build_model(tokenizer, seed).save_pretrained(work, safe_serialization=True)
        # No sampling defaults of the model's own: vLLM would apply a generation config's.
        with open(work / "generation_config.json", "w", encoding="utf-8") as fh:
            json.dump({"bos_token_id": tokenizer.token_to_id(BOS),
                       "eos_token_id": tokenizer.token_to_id(EOS)}, fh)
        (work / "mpiswarm-tiny.json").write_text(json.dumps({"seed": seed}), encoding="utf-8")
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight Hugging Face llama.")
    parser.add_argument("out", type=Path, help="the model directory to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be non-negative")
    print(write_tiny_model(args.out, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
