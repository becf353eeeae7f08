"""Tiny randomly initialised Hugging Face models and a locally built tokenizer, for tests against real
engines (vLLM with ``load_format="dummy"``, transformers) without downloading anything.

:func:`build_tiny_model` writes a model directory — ``config.json`` for any architecture config you
give it (:func:`tiny_llama_config` and :func:`tiny_mixtral_config` are small defaults), plus a
word-level tokenizer built with the ``tokenizers`` library — that ``vllm.LLM(model=path,
load_format="dummy")`` or ``transformers.AutoConfig``/``AutoTokenizer`` load offline. No weights are
written unless ``weights=True`` (then transformers initialises them randomly and saves safetensors,
which needs torch).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
"""Ids 0, 1, 2: unknown, beginning and end of sequence."""


def tiny_llama_config(vocab_size: int = 512, **over: Any) -> dict:
    """A two-layer Llama with hidden size 64 (2 heads of 32: CPU attention kernels need a head size of
    at least 32), as a ``config.json`` dict; keyword arguments replace entries."""
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "torch_dtype": "float32",
        "initializer_range": 0.02,
    }
    cfg.update(over)
    return cfg


def tiny_mixtral_config(vocab_size: int = 512, num_local_experts: int = 4, num_experts_per_tok: int = 2, **over: Any) -> dict:
    """A two-layer Mixtral (mixture of experts) of the same size as :func:`tiny_llama_config`."""
    cfg = tiny_llama_config(vocab_size, architectures=["MixtralForCausalLM"], model_type="mixtral", num_local_experts=num_local_experts, num_experts_per_tok=num_experts_per_tok, router_aux_loss_coef=0.0, output_router_logits=False, sliding_window=None)
    cfg.update(over)
    return cfg


def build_tokenizer(path: str | Path, vocab_size: int = 512, model_max_length: int = 2048) -> Path:
    """Writes a word-level tokenizer of ``vocab_size`` tokens (``<unk>``, ``<s>``, ``</s>``, then
    ``w3`` ... ``w{vocab_size-1}``, whitespace-separated) as ``tokenizer.json`` and
    ``tokenizer_config.json`` into ``path``; returns ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS)}, got {vocab_size}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update((f"w{i}", i) for i in range(len(SPECIAL_TOKENS), vocab_size))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    tok.save(str(path / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<unk>",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps({k: config[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")}, indent=2))
    return path


def build_tiny_model(path: str | Path, config: dict | None = None, weights: bool = False) -> Path:
    """Writes a model directory at ``path``: ``config.json`` from ``config`` (default
    :func:`tiny_llama_config`), a ``generation_config.json`` and a local tokenizer sized to the
    config's ``vocab_size``. With ``weights`` the model is also initialised randomly by transformers
    and saved (otherwise engines load it with ``load_format="dummy"``). Returns ``path``."""
    config = dict(config or tiny_llama_config())
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=2))
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    build_tokenizer(path, vocab_size=config["vocab_size"], model_max_length=config.get("max_position_embeddings", 2048))
    if weights:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        model.save_pretrained(path)
    return path
