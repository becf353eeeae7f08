"""The adapter with vLLM's default multiprocessing: the engine core runs in a spawned process (vLLM
on CPU spawns), which must rebuild the scheduler class by name and get its policy."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

if importlib.util.find_spec("vllm") is None:
    pytest.skip("vLLM is not installed; scripts/install-engines.sh installs it", allow_module_level=True)

from harness.tiny_models import build_tiny_model, tiny_llama_config  # noqa: E402

SCRIPT = """
import sys
from vllm import LLM, SamplingParams
from fleetwise.integrations.vllm_scheduler import make_scheduler_cls
from fleetwise.policy import ShortestPromptFirst

if __name__ == "__main__":
    llm = LLM(model=sys.argv[1], load_format="dummy", dtype="float32", enforce_eager=True, seed=0, max_model_len=256,
              max_num_seqs=4, max_num_batched_tokens=128, gpu_memory_utilization=0.1, async_scheduling=False,
              scheduler_cls=make_scheduler_cls(ShortestPromptFirst(max_num_seqs=4, max_num_batched_tokens=128)))
    outs = llm.generate([[5] * n for n in (40, 7, 90)], SamplingParams(max_tokens=5, ignore_eos=True))
    print("generated", [len(o.outputs[0].token_ids) for o in outs])
"""


def test_make_scheduler_cls_works_with_a_spawned_engine_core(tmp_path):
    model = build_tiny_model(tmp_path / "tiny", tiny_llama_config())
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "VLLM_ENABLE_V1_MULTIPROCESSING"}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_WORKER_MULTIPROC_METHOD": "spawn",
                "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "python"), env.get("PYTHONPATH", "")])})
    r = subprocess.run([sys.executable, str(script), str(model)], capture_output=True, text=True, timeout=900, env=env, start_new_session=True)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "generated [5, 5, 5]" in r.stdout
