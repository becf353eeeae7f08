"""A model's shape read from its Hugging Face ``config.json``: a scenario's
``models: {name: {hf_config: path/to/config.json}}``.

The common decoder families are mapped onto ``ModelSpec``'s fields: Llama, Mistral (with its
``sliding_window``), Mixtral, Qwen2/Qwen3 and their MoE variants, MiMo (gated MLPs, grouped-query
attention), DeepSeek-V2/V3 (multi-head latent attention, MoE with shared experts after dense
layers), and OPT, BLOOM, Falcon, GPT-2 and GPT-NeoX (plain two-matrix MLPs; Falcon and GPT-NeoX
with parallel attention + MLP blocks); any family's multi-token-prediction modules
(``num_nextn_predict_layers``, ``mtp_num_hidden_layers``) as ``mtp_layers``. A missing or mistyped
field, an unknown family or a feature the cost model does not represent is a ``ValueError`` naming
the file and the field.

What is not read: biases, learned position embeddings (OPT, GPT-2: under 0.1% of the weights) and
the norm kind; weights and KV are 16-bit (``dtype_bytes: 2``, as vLLM's ``dtype: auto`` serves
float32 checkpoints in float16) unless the scenario gives ``dtype_bytes`` beside ``hf_config``.
The context (``max_position_embeddings``) is vLLM's ``max_model_len``: ``rope_scaling`` included.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fleetwise.config.limits import MAX_TOKENS

MAX_CONFIG_BYTES = 1 << 20
"""Largest ``config.json`` read: real ones are a few kilobytes."""

_BY_ARCHITECTURE = {
    "LlamaForCausalLM": "llama",
    "LlamaForCausalLMEagle3": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3MoeForCausalLM": "qwen3_moe",
    "OPTForCausalLM": "opt",
    "BloomForCausalLM": "bloom",
    "FalconForCausalLM": "falcon",
    "RWForCausalLM": "falcon",
    "GPT2LMHeadModel": "gpt2",
    "GPTNeoXForCausalLM": "gpt_neox",
    "MiMoForCausalLM": "mimo",
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
}
"""The family of each supported ``architectures`` entry."""

_ALIASES = {"RefinedWeb": "falcon", "RefinedWebModel": "falcon"}
"""Old ``model_type`` names of a supported family."""

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mimo", "deepseek_v2", "deepseek_v3", "opt", "bloom", "falcon", "gpt2", "gpt_neox")
"""The ``model_type`` values read."""

_TIED_BY_DEFAULT = {"opt", "bloom", "falcon", "gpt2"}
"""Families whose LM head shares the embedding unless the config says otherwise (their
transformers config classes default ``tie_word_embeddings`` to true)."""

_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length", "max_sequence_length", "max_seq_length", "seq_len")
"""Where a config gives its context length; vLLM takes the smallest of those present (none: 2048)."""

_ROPE_UNSCALED = ("su", "longrope", "llama3")
"""``rope_scaling`` types whose ``max_position_embeddings`` already is the scaled context (vLLM
leaves it as is); every other type multiplies the context by its ``factor``."""

_GATED = ("llama", "mistral", "mixtral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mimo")
"""Families with gated MLPs and grouped-query attention."""

_MTP_KEYS = ("num_nextn_predict_layers", "mtp_num_hidden_layers")
"""Where a config counts its multi-token-prediction modules (DeepSeek-V3, GLM-4.5 and MiMo; Qwen3-Next)."""

_SIXTEEN_BIT = {None, "float16", "bfloat16", "float32"}
"""``torch_dtype`` values served in 16 bits."""


class _Config:
    """One parsed ``config.json``, with typed getters whose errors name the file and the field."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data = path, data

    def fail(self, field: str, what: str) -> ValueError:
        """The error for ``field`` of this file."""
        return ValueError(f"{self.path}: {field}: {what}")

    def whole(self, *names: str, default: int | None = None, minimum: int = 1) -> int:
        """The first of ``names`` present and not null, a whole number >= ``minimum``; ``default``
        when none is (an error when there is no default)."""
        for name in names:
            value = self.data.get(name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise self.fail(name, f"must be a whole number >= {minimum}, got {value!r}")
            return value
        if default is None:
            raise self.fail(" or ".join(names), f"missing; a {self.data.get('model_type')} config needs it")
        return default

    def flag(self, name: str, default: bool) -> bool:
        """``name`` as true/false, ``default`` when absent or null."""
        value = self.data.get(name)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.fail(name, f"must be true or false, got {value!r}")
        return value


def _read(path: Path) -> dict:
    """The JSON object in ``path``."""
    from fleetwise.paths import path_kind

    if path_kind(path, "hf_config", ValueError) != "file":
        raise ValueError(f"{path}: hf_config file not found")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ValueError(f"{path}: over {MAX_CONFIG_BYTES} bytes; not a model config.json")
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:
        raise ValueError(f"{path}: not valid JSON: nested too deeply; not a model config.json") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise ValueError(f"{path}: not valid JSON: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config.json is a JSON object, got {type(data).__name__}")
    return data


def _family(cfg: _Config) -> str:
    """The supported family ``cfg`` belongs to, by ``model_type`` or else ``architectures``."""
    kind = cfg.data.get("model_type")
    kind = _ALIASES.get(kind, kind) if isinstance(kind, str) else None
    if kind is None:
        archs = cfg.data.get("architectures")
        known = [_BY_ARCHITECTURE[a] for a in archs if isinstance(a, str) and a in _BY_ARCHITECTURE] if isinstance(archs, list) else []
        if not known:
            raise cfg.fail("model_type", f"missing, and architectures {archs!r} names no supported model; supported: {', '.join(_BY_ARCHITECTURE)}")
        kind = known[0]
    if kind not in SUPPORTED_MODEL_TYPES:
        raise cfg.fail("model_type", f"{kind!r} is not supported; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    return kind


def _head_dim(cfg: _Config, hidden: int, heads: int) -> int:
    """``head_dim`` if given, else hidden / heads (which must divide)."""
    if cfg.data.get("head_dim") is not None:
        return cfg.whole("head_dim")
    if hidden % heads:
        raise cfg.fail("num_attention_heads", f"{heads} does not divide hidden_size {hidden}, and no head_dim is given")
    return hidden // heads


def _gated(cfg: _Config, kind: str) -> dict[str, Any]:
    """Llama, Mistral, Mixtral and Qwen: gated MLPs and grouped-query attention."""
    hidden, heads = cfg.whole("hidden_size"), cfg.whole("num_attention_heads")
    out: dict[str, Any] = {
        "num_layers": cfg.whole("num_hidden_layers"),
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": cfg.whole("num_key_value_heads", default=heads),
        "head_dim": _head_dim(cfg, hidden, heads),
        "intermediate_size": cfg.whole("intermediate_size"),
    }
    if kind in ("mistral", "mixtral") and cfg.data.get("sliding_window") is not None:
        out["sliding_window"] = cfg.whole("sliding_window")
    if (kind.startswith("qwen") or kind == "mimo") and cfg.flag("use_sliding_window", False):
        raise cfg.fail("use_sliding_window", "Qwen's per-layer sliding windows (max_window_layers) are not modelled; set it false")
    if kind == "mixtral":
        out |= {"num_experts": cfg.whole("num_local_experts"), "experts_per_token": cfg.whole("num_experts_per_tok"), "moe_intermediate_size": out["intermediate_size"]}
    if kind in ("qwen2_moe", "qwen3_moe"):
        if cfg.data.get("mlp_only_layers"):
            raise cfg.fail("mlp_only_layers", f"dense layers at chosen indices ({cfg.data['mlp_only_layers']!r}) are not modelled; only decoder_sparse_step")
        out |= {
            "num_experts": cfg.whole("num_experts"),
            "experts_per_token": cfg.whole("num_experts_per_tok"),
            "moe_intermediate_size": cfg.whole("moe_intermediate_size"),
            "moe_layer_interval": cfg.whole("decoder_sparse_step", default=1),
        }
        shared = cfg.whole("shared_expert_intermediate_size", default=0, minimum=0) if kind == "qwen2_moe" else 0
        if shared:
            out |= {"num_shared_experts": 1, "shared_expert_intermediate_size": shared}
    return out


def _deepseek(cfg: _Config) -> dict[str, Any]:
    """DeepSeek-V2 and -V3: multi-head latent attention, and (if ``n_routed_experts``) MoE layers
    with shared experts after ``first_k_dense_replace`` dense ones."""
    hidden, heads = cfg.whole("hidden_size"), cfg.whole("num_attention_heads")
    if cfg.whole("moe_layer_freq", default=1) != 1:
        raise cfg.fail("moe_layer_freq", f"{cfg.data['moe_layer_freq']!r}: only 1 (every layer past first_k_dense_replace) is modelled")
    v_head = cfg.whole("v_head_dim")
    out: dict[str, Any] = {
        "num_layers": cfg.whole("num_hidden_layers"),
        "hidden_size": hidden,
        "num_heads": heads,
        # Nominal: MLA replaces grouped-query attention (the core reads mla instead).
        "num_kv_heads": heads,
        "head_dim": v_head,
        "intermediate_size": cfg.whole("intermediate_size"),
        "mla": {
            "q_lora_rank": cfg.whole("q_lora_rank") if cfg.data.get("q_lora_rank") is not None else None,
            "kv_lora_rank": cfg.whole("kv_lora_rank"),
            "qk_nope_head_dim": cfg.whole("qk_nope_head_dim", minimum=0),
            "qk_rope_head_dim": cfg.whole("qk_rope_head_dim", minimum=0),
            "v_head_dim": v_head,
        },
    }
    experts = cfg.whole("n_routed_experts", default=0, minimum=0)
    if experts:
        width = cfg.whole("moe_intermediate_size")
        shared = cfg.whole("n_shared_experts", default=0, minimum=0)
        out |= {
            "num_experts": experts,
            "experts_per_token": cfg.whole("num_experts_per_tok"),
            "moe_intermediate_size": width,
            "num_shared_experts": shared,
            "shared_expert_intermediate_size": width if shared else 0,
            "first_dense_layers": cfg.whole("first_k_dense_replace", default=0, minimum=0),
        }
    return out


def _plain(cfg: _Config, kind: str) -> dict[str, Any]:
    """OPT, BLOOM, Falcon, GPT-2 and GPT-NeoX: plain MLPs, multi-head (Falcon: multi-query or
    grouped) attention."""
    if kind == "gpt2":
        hidden, heads, layers = cfg.whole("n_embd"), cfg.whole("n_head"), cfg.whole("n_layer")
    else:
        hidden = cfg.whole("hidden_size", "n_embed")
        heads = cfg.whole("num_attention_heads", "n_head")
        layers = cfg.whole("num_hidden_layers", "n_layer")
    kv = heads
    if kind == "falcon":
        if cfg.flag("new_decoder_architecture", False):
            kv = cfg.whole("num_kv_heads")
        elif cfg.flag("multi_query", True):
            kv = 1
    if kind == "opt" and cfg.whole("word_embed_proj_dim", default=hidden) != hidden:
        raise cfg.fail("word_embed_proj_dim", f"{cfg.data['word_embed_proj_dim']} differs from hidden_size {hidden}: OPT's embedding projections are not modelled")
    width = {
        "opt": lambda: cfg.whole("ffn_dim"),
        "bloom": lambda: 4 * hidden,
        "falcon": lambda: cfg.whole("ffn_hidden_size", default=4 * hidden),
        "gpt2": lambda: cfg.whole("n_inner", default=4 * hidden),
        "gpt_neox": lambda: cfg.whole("intermediate_size"),
    }[kind]()
    parallel = {"falcon": lambda: cfg.flag("parallel_attn", True) or cfg.flag("new_decoder_architecture", False), "gpt_neox": lambda: cfg.flag("use_parallel_residual", True)}
    return {
        "num_layers": layers,
        "hidden_size": hidden,
        "num_heads": heads,
        "num_kv_heads": kv,
        "head_dim": _head_dim(cfg, hidden, heads),
        "intermediate_size": width,
        "mlp": "plain",
        "parallel_attention": parallel[kind]() if kind in parallel else False,
    }


def _whole_number(value: Any) -> bool:
    """Whether ``value`` is a whole number >= 1 (an int, or a float with no fraction)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 1 and float(value).is_integer()


def _context(cfg: _Config) -> int:
    """The longest request (prompt + output) the model serves, as vLLM derives ``max_model_len``:
    the smallest of the context keys present (2048 when none is), then ``rope_scaling``: a YaRN
    factor multiplies ``original_max_position_embeddings``, a linear or dynamic one the context;
    ``llama3``, ``longrope`` and ``su`` configs give the scaled context already."""
    # The first key present must be a whole number; the others count when they are one (a float
    # such as 2048.0 in a secondary key is read as vLLM reads it, anything else is left out).
    first = next((k for k in _CONTEXT_KEYS if cfg.data.get(k) is not None), None)
    present = [cfg.whole(first)] if first else []
    present += [int(v) for k in _CONTEXT_KEYS if k != first for v in [cfg.data.get(k)] if _whole_number(v)]
    context = min(present) if present else 2048
    rope = cfg.data.get("rope_scaling")
    if rope is None:
        return context
    if not isinstance(rope, dict):
        raise cfg.fail("rope_scaling", f"must be an object (rope_type, factor, ...), got {type(rope).__name__}")
    kind = rope.get("rope_type", rope.get("type"))
    if not isinstance(kind, str):
        raise cfg.fail("rope_scaling.rope_type", f"must name the scaling (e.g. yarn, linear, dynamic, llama3), got {kind!r}")
    if kind in _ROPE_UNSCALED:
        return context
    factor = rope.get("factor")
    factor = 1.0 if factor is None else factor
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0 < factor <= 1e4 or factor != factor:
        raise cfg.fail("rope_scaling.factor", f"must be a number in (0, 10000], got {factor!r}")
    if kind == "yarn":
        base = rope.get("original_max_position_embeddings")
        if not _whole_number(base):
            raise cfg.fail("rope_scaling.original_max_position_embeddings", f"a yarn scaling needs it as a whole number >= 1, got {base!r}")
        context = int(base)
    scaled = int(context * factor)
    if not 1 <= scaled <= MAX_TOKENS:
        raise cfg.fail("rope_scaling.factor", f"{factor!r} makes the context {scaled} tokens; it must stay within 1..{MAX_TOKENS}")
    return scaled


def hf_model_fields(path: str, base_dir: str | Path | None = None, dtype_given: bool = False) -> dict[str, Any]:
    """The ``ModelSpec`` fields of the Hugging Face ``config.json`` at ``path`` (relative to
    ``base_dir``, the scenario's folder, when given); ``hf_config`` is the resolved path.
    ``dtype_given``: the scenario sets ``dtype_bytes`` itself, so ``torch_dtype`` is not read."""
    try:
        p = Path(path).expanduser()
    except RuntimeError:  # ~user of no such user: the path as written (not found below)
        p = Path(path)
    if not p.is_absolute() and base_dir is not None:
        p = Path(base_dir) / p
    try:
        p = p.resolve()
    except (RuntimeError, OSError) as e:  # a symlink loop (RuntimeError before Python 3.13)
        raise ValueError(f"{p}: cannot resolve the hf_config path: {e}") from None
    cfg = _Config(p, _read(p))
    if cfg.data.get("quantization_config") is not None and not dtype_given:
        raise cfg.fail("quantization_config", "quantized weights are not read; give dtype_bytes beside hf_config (2 reads the 16-bit shape; "
                       "the pool's quantization, e.g. weights: fp8, then sets the checkpoint's format: docs/quantization.md)")
    dtype = cfg.data.get("torch_dtype", cfg.data.get("dtype"))
    if dtype not in _SIXTEEN_BIT and not dtype_given:
        raise cfg.fail("torch_dtype", f"{dtype!r} is not read (float16, bfloat16 or float32); give dtype_bytes beside hf_config")
    kind = _family(cfg)
    out = _gated(cfg, kind) if kind in _GATED else _deepseek(cfg) if kind.startswith("deepseek") else _plain(cfg, kind)
    mtp = next((k for k in _MTP_KEYS if cfg.data.get(k) is not None), None)
    if mtp is not None:
        out["mtp_layers"] = cfg.whole(mtp, minimum=0)
    name = cfg.data.get("_name_or_path")
    return {
        "hf_id": name if isinstance(name, str) else "",
        "hf_config": str(p),
        **out,
        # An EAGLE-3 head's config gives its own LM head's rows as draft_vocab_size.
        "vocab_size": cfg.whole("draft_vocab_size", "vocab_size"),
        "max_position_embeddings": _context(cfg),
        "tie_word_embeddings": cfg.flag("tie_word_embeddings", kind in _TIED_BY_DEFAULT),
    }
