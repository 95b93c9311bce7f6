#!/usr/bin/env python3
"""Write a random-weight LoRA adapter for the tiny llama of ``tiny_hf.py``, for vLLM's
``--enable-lora --lora-modules NAME=DIR`` in the real-vLLM tests.

The adapter is written by hand, as PEFT saves one, without needing ``peft``:

* ``adapter_config.json`` — the fields vLLM's ``PEFTHelper`` reads (``r``, ``lora_alpha``,
  ``target_modules``, ``bias``, ``peft_type``, ``task_type``, ``base_model_name_or_path``);
* ``adapter_model.safetensors`` — ``base_model.model.model.layers.{i}.{module}.lora_A.weight``
  (``r x in``) and ``….lora_B.weight`` (``out x r``) for every target module of every layer.

Both matrices are random (PEFT's own initialisation leaves ``lora_B`` zero, an adapter that
changes nothing), scaled so that ``alpha / r * B @ A`` is about as large as the base weight:
greedy answers then differ from the base model's.  The rows of ``lora_B`` that would write the
tiny model's bias channel (``tiny_hf.BIAS_CHANNEL``, held constant so that its answers never end
on their own) are zero, so the adapter's answers do not end early either.

The directory is a pure function of the base model's shape and ``seed``, and is written
atomically (into a temporary directory beside the target, then renamed).  It needs ``torch``
and ``safetensors`` (the Python of the vLLM environment has both: ``tools/vllm_server.py python``).

Command line::

    python mpiswarm/engines/tiny_lora.py BASE_MODEL_DIR OUT_DIR [--seed S] [--rank R]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

try:  # imported as mpiswarm.engines.tiny_lora
    from .tiny_hf import BIAS_CHANNEL, atomic_directory  # BIAS_CHANNEL: the channel no layer may write
except ImportError:  # run as a file by the vLLM environment's Python, which has not this package:
    # the file's directory (this package's engines/) is sys.path[0], so tiny_hf imports as it is
    from tiny_hf import BIAS_CHANNEL, atomic_directory

RANK = 8
ALPHA = 16
#: Llama's attention and MLP projections; those whose output is the residual stream
#: (``o_proj``, ``down_proj``) must leave the bias channel alone.
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RESIDUAL_WRITERS = ("o_proj", "down_proj")


def module_shapes(config: dict) -> dict[str, tuple[str, int, int]]:
    """``{module: (parent, in_features, out_features)}`` of one llama layer."""
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    kv = config.get("num_key_value_heads", heads) * head_dim
    return {"q_proj": ("self_attn", hidden, heads * head_dim), "k_proj": ("self_attn", hidden, kv),
            "v_proj": ("self_attn", hidden, kv), "o_proj": ("self_attn", heads * head_dim, hidden),
            "gate_proj": ("mlp", hidden, inter), "up_proj": ("mlp", hidden, inter),
            "down_proj": ("mlp", inter, hidden)}


def adapter_tensors(config: dict, seed: int, rank: int):  # -> dict[str, torch.Tensor]
    """The adapter's weights, in a fixed order from one seeded generator."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    shapes = module_shapes(config)
    tensors = {}
    for layer in range(config["num_hidden_layers"]):
        for module in TARGET_MODULES:
            parent, fan_in, fan_out = shapes[module]
            prefix = f"base_model.model.model.layers.{layer}.{parent}.{module}"
            a = torch.randn(rank, fan_in, generator=generator) * fan_in ** -0.5
            b = torch.randn(fan_out, rank, generator=generator) * rank ** -0.5
            if module in RESIDUAL_WRITERS:
                b[BIAS_CHANNEL, :] = 0.0
            tensors[f"{prefix}.lora_A.weight"] = a.to(torch.bfloat16).contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.to(torch.bfloat16).contiguous()
    return tensors


def write_tiny_lora(base: os.PathLike[str] | str, path: os.PathLike[str] | str, seed: int = 0,
                    rank: int = RANK) -> Path:
    """Write the adapter of the model at ``base`` to ``path`` atomically and return ``path``."""
    from safetensors.torch import save_file

    config = json.loads((Path(base) / "config.json").read_text(encoding="utf-8"))
    with atomic_directory(path) as work:
        save_file(adapter_tensors(config, seed, rank), str(work / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        adapter_config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": ALPHA,
                          "lora_dropout": 0.0, "bias": "none", "target_modules": list(TARGET_MODULES),
                          "base_model_name_or_path": str(Path(base).resolve()), "fan_in_fan_out": False,
                          "inference_mode": True, "modules_to_save": None, "use_rslora": False,
                          "use_dora": False, "init_lora_weights": True}
        (work / "adapter_config.json").write_text(json.dumps(adapter_config, indent=1, sort_keys=True),
                                                  encoding="utf-8")
        (work / "mpiswarm-tiny-lora.json").write_text(json.dumps({"seed": seed, "rank": rank}),
                                                      encoding="utf-8")
    return Path(path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a random-weight LoRA adapter for the tiny llama.")
    parser.add_argument("base", type=Path, help="the base model's directory (tiny_hf.py)")
    parser.add_argument("out", type=Path, help="the adapter directory to write")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    parser.add_argument("--rank", type=int, default=RANK, help=f"LoRA rank r (default {RANK})")
    args = parser.parse_args(argv)
    if args.seed < 0 or args.rank < 1:
        parser.error("--seed must be non-negative and --rank positive")
    print(write_tiny_lora(args.base, args.out, seed=args.seed, rank=args.rank))
    return 0


if __name__ == "__main__":
    sys.exit(main())
