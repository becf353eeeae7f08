"""Model families beyond gated-MLP decoders: plain MLPs, parallel blocks, sliding windows,
interleaved MoE layers, and models read from a Hugging Face ``config.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import run_cli, small_scenario
from fleetwise.catalog import ModelSpec, builtin_models
from fleetwise.config.load import scenario_from_dict
from fleetwise.cost import cost_model
from fleetwise.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures" / "hf_config"


def _shape(spec: ModelSpec) -> dict:
    """The fields the core reads (no hf_id or hf_config)."""
    return spec.model_dump(exclude={"hf_id", "hf_config"})


@pytest.mark.parametrize(
    "file, name",
    [("mistral-7b-v0.1.json", "mistral-7b"), ("opt-66b.json", "opt-66b"), ("bloom.json", "bloom-176b"), ("falcon-40b.json", "falcon-40b"), ("qwen1.5-moe-a2.7b.json", "qwen1.5-moe-a2.7b"),
     ("deepseek-v2-lite.json", "deepseek-v2-lite"), ("deepseek-v3.json", "deepseek-v3")],
)
def test_hf_config_reads_the_same_shape_as_the_catalogue(file, name):
    # DeepSeek-V3's checkpoint is FP8 (its quantization_config): its 16-bit shape is read when the
    # scenario says dtype_bytes beside it, the pool's quantization then sets the format.
    extra = {"dtype_bytes": 2} if name == "deepseek-v3" else {}
    read = ModelSpec.model_validate({"hf_config": str(FIXTURES / file), **extra})
    assert _shape(read) == _shape(builtin_models()[name])
    assert read.hf_config == str((FIXTURES / file).resolve())


def test_hf_config_families_map_their_own_fields():
    gpt2 = ModelSpec.model_validate({"hf_config": str(FIXTURES / "gpt2.json")})
    # n_inner null: 4 x n_embd; n_positions is the context; GPT-2 ties its LM head.
    assert (gpt2.num_layers, gpt2.hidden_size, gpt2.num_heads, gpt2.head_dim, gpt2.intermediate_size) == (12, 768, 12, 64, 3072)
    assert (gpt2.max_position_embeddings, gpt2.tie_word_embeddings, gpt2.mlp, gpt2.parallel_attention) == (1024, True, "plain", False)
    falcon = ModelSpec.model_validate({"hf_config": str(FIXTURES / "falcon-40b.json")})
    assert (falcon.num_kv_heads, falcon.parallel_attention, falcon.max_position_embeddings) == (8, True, 2048)
    # Fields beside hf_config override the file's.
    eight_bit = ModelSpec.model_validate({"hf_config": str(FIXTURES / "opt-66b.json"), "dtype_bytes": 1, "max_position_embeddings": 4096})
    assert (eight_bit.dtype_bytes, eight_bit.max_position_embeddings, eight_bit.hidden_size) == (1, 4096, 9216)


def test_hf_config_reads_multi_token_prediction_modules(tmp_path):
    """``num_nextn_predict_layers`` (DeepSeek-V3, MiMo) and ``mtp_num_hidden_layers`` (Qwen3-Next)
    become ``mtp_layers``, what speculative ``method: mtp`` needs; absent: 0."""
    mistral = json.loads((FIXTURES / "mistral-7b-v0.1.json").read_text())
    mimo = {**mistral, "model_type": "mimo", "architectures": ["MiMoForCausalLM"], "num_nextn_predict_layers": 1, "use_sliding_window": False}
    qwen = {**json.loads((FIXTURES / "qwen1.5-moe-a2.7b.json").read_text()), "mtp_num_hidden_layers": 2}
    read = {}
    for name, cfg in [("mimo", mimo), ("qwen", qwen), ("mistral", mistral)]:
        (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
        read[name] = ModelSpec.model_validate({"hf_config": str(tmp_path / f"{name}.json")})
    assert (read["mimo"].mtp_layers, read["qwen"].mtp_layers, read["mistral"].mtp_layers) == (1, 2, 0)
    assert read["mimo"].sliding_window is None and read["mimo"].intermediate_size == mistral["intermediate_size"]
    assert builtin_models()["deepseek-v3"].mtp_layers == 1


def test_a_scenario_reads_hf_config_relative_to_its_folder(tmp_path, write_yaml):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "config.json").write_text((FIXTURES / "mistral-7b-v0.1.json").read_text())
    sc = small_scenario(models={"my-mistral": {"hf_config": "configs/config.json"}})
    sc["cluster"]["pools"][0]["model"] = "my-mistral"
    sc["workload"]["requests"] = 60
    out = tmp_path / "out"
    r = run_cli("run", str(write_yaml(sc)), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert (out / "summary.json").is_file()


def _bad(tmp_path, write_yaml, config: dict) -> str:
    """The CLI's stderr for a scenario whose model reads ``config``; asserts exit 2, no traceback."""
    (tmp_path / "config.json").write_text(json.dumps(config))
    sc = small_scenario(models={"mine": {"hf_config": "config.json"}})
    sc["cluster"]["pools"][0]["model"] = "mine"
    r = run_cli("run", str(write_yaml(sc)), "-o", str(tmp_path / "out"))
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr


def test_bad_hf_configs_are_errors_naming_the_file_and_field(tmp_path, write_yaml):
    mistral = json.loads((FIXTURES / "mistral-7b-v0.1.json").read_text())
    config = str((tmp_path / "config.json").resolve())
    missing = {k: v for k, v in mistral.items() if k != "num_hidden_layers"}
    err = _bad(tmp_path, write_yaml, missing)
    assert "models.mine" in err and config in err and "num_hidden_layers: missing" in err, err
    err = _bad(tmp_path, write_yaml, {**mistral, "model_type": "t5", "architectures": ["T5ForConditionalGeneration"]})
    assert config in err and "model_type: 't5' is not supported" in err and "opt" in err, err
    err = _bad(tmp_path, write_yaml, {**mistral, "hidden_size": "4096"})
    assert "hidden_size: must be a whole number" in err, err
    qwen = json.loads((FIXTURES / "qwen1.5-moe-a2.7b.json").read_text())
    err = _bad(tmp_path, write_yaml, {**qwen, "use_sliding_window": True})
    assert "use_sliding_window" in err, err
    err = _bad(tmp_path, write_yaml, {**json.loads((FIXTURES / "opt-66b.json").read_text()), "word_embed_proj_dim": 512})
    assert "word_embed_proj_dim" in err, err
    deepseek = json.loads((FIXTURES / "deepseek-v3.json").read_text())
    err = _bad(tmp_path, write_yaml, deepseek)
    assert "quantization_config" in err and "dtype_bytes" in err and "weights: fp8" in err, err
    err = _bad(tmp_path, write_yaml, {**deepseek, "quantization_config": None, "moe_layer_freq": 2})
    assert "moe_layer_freq: 2: only 1" in err, err
    err = _bad(tmp_path, write_yaml, {**deepseek, "quantization_config": None, "num_nextn_predict_layers": -1})
    assert "num_nextn_predict_layers: must be a whole number >= 0" in err, err
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        scenario_from_dict({**small_scenario(models={"m": {"hf_config": "config.json"}})}, "s.yaml", tmp_path)
    with pytest.raises(ConfigError, match="hf_config file not found"):
        scenario_from_dict(small_scenario(models={"m": {"hf_config": "nowhere.json"}}), "s.yaml", tmp_path)


def test_sliding_window_bounds_decode_attention_from_python():
    # Mistral-7B reads at most 4096 keys per decode; without the window, all 10000.
    windowed = cost_model("mistral-7b", "h100-sxm")
    full = cost_model(builtin_models()["mistral-7b"].model_copy(update={"sliding_window": None}), "h100-sxm", model_name="mistral-7b")

    def attention_bytes(cm, ctx):
        return next(op["bytes"] for op in cm.breakdown([], [ctx] * 8) if op["op"] == "decode_attention")

    assert attention_bytes(windowed, 10_000) == attention_bytes(windowed, 4096)
    # 32 layers x (K and V of 8 heads x 128 over 8 x 10000 keys + q in and out).
    assert attention_bytes(full, 10_000) == pytest.approx(32 * (2 * 1024 * 80_000 + 2 * 8 * 4096) * 2)
    assert windowed.iteration_seconds([], [10_000] * 8) < full.iteration_seconds([], [10_000] * 8)


def test_interleaved_moe_counts_experts_on_every_other_layer():
    mixtral = builtin_models()["mixtral-8x7b"]
    half = mixtral.model_copy(update={"moe_layer_interval": 2})
    assert (mixtral.moe_layers, half.moe_layers) == (32, 16)
    # 16 MoE layers and 16 dense (14336-wide gated MLP) layers: 26.972 B parameters, 2 bytes each.
    cm = cost_model(half, "h100-sxm", model_name="mixtral-half")
    assert cm.weight_bytes_per_gpu() == 2 * 26_972_262_400


def test_estimate_holds_and_reads_only_the_window():
    def estimate(context: int) -> dict:
        r = run_cli("estimate", "--model", "mistral-7b", "--gpu", "h100-sxm", "--decode-batch", "64", "--context", str(context), "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    long, window = estimate(16_000), estimate(4095)
    # 64 sequences x 4096 tokens x 131072 bytes (32 layers x 2 x 8 heads x 128 x 2 bytes).
    assert long["memory"]["kv_cache"] == window["memory"]["kv_cache"] == 64 * 4096 * 131_072
    assert long["seconds"] == window["seconds"]


def test_hf_config_context_follows_rope_scaling_as_vllm_derives_it(tmp_path):
    """The context a config allows is vLLM's max_model_len: the smallest context key, times a
    linear/dynamic factor, a YaRN factor times its original length, llama3 left as written."""
    mistral = json.loads((FIXTURES / "mistral-7b-v0.1.json").read_text())

    def context(**extra) -> int:
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**mistral, **extra}))
        return ModelSpec.model_validate({"hf_config": str(path)}).max_position_embeddings

    assert context() == 32768
    # Qwen2.5's documented long-context setting: YaRN x4 over 32768 original positions.
    assert context(rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}) == 131072
    assert context(rope_scaling={"type": "linear", "factor": 2.0}) == 65536
    assert context(max_position_embeddings=4096, rope_scaling={"type": "dynamic", "factor": 1.5}) == 6144
    # Llama-3.1 writes the scaled context itself.
    assert context(max_position_embeddings=131072, rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}) == 131072
    # Several context keys: the smallest, as vLLM.
    assert context(seq_length=2048) == 2048
    for bad, field in [
        ({"rope_scaling": [2.0]}, "rope_scaling: must be an object"),
        ({"rope_scaling": {"factor": 2.0}}, "rope_scaling.rope_type"),
        ({"rope_scaling": {"type": "linear", "factor": "4"}}, "rope_scaling.factor: must be a number"),
        ({"rope_scaling": {"type": "linear", "factor": float("nan")}}, "rope_scaling.factor"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "original_max_position_embeddings"),
        ({"rope_scaling": {"type": "linear", "factor": 1e4}, "max_position_embeddings": 10**9}, "within 1..1000000000"),
    ]:
        with pytest.raises(ValueError, match=field.replace(".", r"\.").replace("(", r"\(")):
            context(**bad)


def test_an_mla_prompt_reduced_to_one_token_by_the_prefix_cache_runs_as_a_decode():
    # DeepSeek-V2-Lite with prefix caching: two requests share an 8192-token prefix and add one
    # token; the second finds the prefix cached and computes its last token alone, a one-token
    # query that vLLM's MLA backends run as a decode (absorbed form): its TTFT is a decode step
    # at context 8193 to the nanosecond, not an expansion of 8193 cached latents.
    import fleetwise

    sc = {"name": "mla-prefix", "seed": 3,
          "cluster": {"pools": [{"name": "main", "gpu": "h100-sxm", "model": "deepseek-v2-lite", "prefix_caching": True,
                                 "scheduler": {"kind": "vllm", "max_num_seqs": 8}}]},
          "workload": {"arrivals": {"kind": "poisson", "rate": 0.01}, "lengths": {"kind": "constant", "prompt": 1, "output": 2}, "requests": 2,
                       "prefixes": {"groups": 1, "prefix_tokens": 8192, "fraction": 1.0, "block_tokens": 16}}}
    r = fleetwise.simulate(sc)
    assert r.instances["prefix_hit_tokens"][0] == 8192
    first, second = r.requests.sort("arrival_ns").rows(named=True)
    assert first["completion_ns"] < second["arrival_ns"], "the second arrives to an idle instance"
    cm = cost_model("deepseek-v2-lite", "h100-sxm")
    decode = cm.iteration_ns(decodes=[8193])
    assert second["first_token_ns"] - second["arrival_ns"] == decode == cm.iteration_ns(prefills=[(1, 8192, True)])
    assert first["first_token_ns"] - first["arrival_ns"] == cm.iteration_ns(prefills=[(8193, 0, True)]) > 20 * decode
