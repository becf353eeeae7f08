"""Adaptive verification (vLLM's ``enable_adaptive_verification``, docs/speculative-decoding.md):
the proposer drafts all k tokens every step, the verify pass checks the j of them that gives the
step's decodes the most tokens per second. Below the batch size where verifying turns
compute-bound the run is the fixed-k run; above it the verify pass is trimmed (with an EAGLE
head at 0.6, back to plain decoding's TPOT where fixed k = 4 is 27% slower), but the drafts are
still paid for, which a batch-size table (whose k also shortens the drafts) is not; ``estimate``
prints the k chosen; a table, a token tree or an n-gram proposer beside it is refused."""

from __future__ import annotations

import json

import pytest

import fleetwise
from conftest import run_cli
from fleetwise.errors import ConfigError
from test_speculative import DRAFT, _scenario, _tpot

EAGLE = {"method": "eagle", "num_speculative_tokens": 4, "acceptance_rate": 0.6}
"""An EAGLE head on Llama-3-70B (4 H100s), accepted at 0.6 a position."""
ADAPTIVE = {"enable_adaptive_verification": True}


def _drafted_per_step(speculative: dict, batch: int) -> float:
    """Draft tokens verified per speculating sequence-step, ``batch`` requests at once."""
    s = fleetwise.simulate(_scenario(speculative, batch)).summary["speculative"]
    return s["num_draft_tokens"] / s["num_drafts"]


def test_adaptive_verification_is_fixed_k_at_low_load_and_trims_the_verify_pass_at_high_load():
    # Eight at once: all four slots pay (memory-bound verify pass): the fixed-k run, but for the
    # last steps of each request, granted fewer than four slots, where the head still drafts four.
    assert _tpot({**EAGLE, **ADAPTIVE}, 8) == pytest.approx(_tpot(EAGLE, 8), rel=1e-4)
    assert _drafted_per_step({**EAGLE, **ADAPTIVE}, 8) > 3.9
    # 256 at once: verifying four makes the pass compute-bound (61.1 ms against 48.2 ms plain);
    # verifying about one a step comes back to plain decoding within 2% (48.8 ms; the head's
    # four draft steps are still run).
    plain, fixed, adaptive = _tpot(None, 256), _tpot(EAGLE, 256), _tpot({**EAGLE, **ADAPTIVE}, 256)
    assert fixed > 1.2 * plain and plain < adaptive < 1.02 * plain, (plain, fixed, adaptive)
    assert 1.0 <= _drafted_per_step({**EAGLE, **ADAPTIVE}, 256) < 1.1


def test_a_draft_models_steps_are_paid_whatever_is_verified():
    # A Llama-3-8B draft at 0.8, 256 at once: trimming the verify pass to about three saves
    # little (57.4 against 58.1 ms) because the draft's four steps over 256 sequences remain; a
    # batch-size table cutting k to one also cuts the drafts (49.1 ms).
    plain, fixed, adaptive = _tpot(None, 256), _tpot(DRAFT, 256), _tpot({**DRAFT, **ADAPTIVE}, 256)
    table = _tpot({**DRAFT, "num_speculative_tokens_per_batch_size": [[1, 64, 4], [65, 1024, 1]]}, 256)
    assert adaptive < fixed and adaptive > 1.15 * plain and table < 1.05 * plain, (plain, fixed, adaptive, table)
    assert 2.5 < _drafted_per_step({**DRAFT, **ADAPTIVE}, 256) < 3.5


def test_estimate_prints_the_k_verified_and_never_a_worse_speedup_than_verifying_all():
    def estimate(batch: int, extra: str = "") -> dict:
        r = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", str(batch), "--context", "1024",
                    "--speculative", "method=eagle,num_speculative_tokens=4,acceptance_rate=0.6" + extra, "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["speculative"]

    ks = {}
    for batch in (1, 8, 64, 128, 256):
        fixed, adaptive = estimate(batch), estimate(batch, ",enable_adaptive_verification=true")
        ks[batch] = adaptive["k"]
        assert fixed["k"] == 4 and adaptive["enable_adaptive_verification"] is True
        assert adaptive["speedup"] >= fixed["speedup"], batch
        if adaptive["k"] == 4:
            assert adaptive["speedup"] == fixed["speedup"], batch
        # The tokens per step are those of the slots verified: 1 + 0.6 + 0.36 + ... over k of them.
        assert adaptive["tokens_per_step"] == pytest.approx(sum(0.6**i for i in range(adaptive["k"] + 1)))
    assert ks[1] == ks[8] == 4 and ks[256] < 4 and ks[256] <= ks[128] <= ks[64], ks
    bad = run_cli("estimate", "--model", "llama-3-70b", "--gpu", "h100-sxm", "--tp", "4", "--decode-batch", "8", "--context", "1024",
                  "--speculative", "method=ngram,num_speculative_tokens=4,acceptance_rate=0.6,enable_adaptive_verification=true")
    assert bad.returncode == 2 and "enable_adaptive_verification applies to model proposers" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("speculative, says", [
    ({**DRAFT, **ADAPTIVE, "num_speculative_tokens_per_batch_size": [[1, 64, 4]]}, "cannot be combined with num_speculative_tokens_per_batch_size"),
    ({"method": "ngram", "num_speculative_tokens": 3, "acceptance_rate": 0.5, **ADAPTIVE}, "not ngram"),
    ({"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": 0.5, "speculative_token_tree": [[0], [1]], **ADAPTIVE}, "not a speculative_token_tree"),
    ({**DRAFT, "enable_adaptive_verification": "sometimes"}, "valid boolean"),
])
def test_what_adaptive_verification_cannot_trim_is_refused_naming_the_file_and_field(write_yaml, speculative, says):
    path = write_yaml(_scenario(speculative))
    with pytest.raises(ConfigError, match="cluster.pools.0.speculative") as err:
        fleetwise.load_scenario(path)
    assert says in str(err.value) and str(path) in str(err.value)
    r = run_cli("run", str(path))
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("batch, own, profiled", [(128, 1.0, 3.0), (256, 1.0, 2.0)])
def test_a_cost_table_profiled_at_8k_verifies_more_than_pays_at_short_contexts(batch, own, profiled):
    # vLLM prices its candidates with a table profiled at 8,192 tokens of context. These decodes
    # hold about 900: at the profiled context the KV reads dominate the step, the extra verified
    # tokens look cheap, and more are verified than pay at the real contexts (128 at once: 3
    # drafts against 1, TPOT 30.3 against 28.5 ms; 256: 2 against 1, 51.2 against 48.8 ms).
    spec = {**EAGLE, **ADAPTIVE}
    assert _drafted_per_step(spec, batch) == pytest.approx(own, abs=0.06)
    assert _drafted_per_step({**spec, "adaptive_profile_context": 8192}, batch) == pytest.approx(profiled, abs=0.06)
    assert _tpot({**spec, "adaptive_profile_context": 8192}, batch) > 1.04 * _tpot(spec, batch)
    # Eight at once verifying all four pays either way: the same run.
    assert _tpot({**spec, "adaptive_profile_context": 8192}, 8) == _tpot(spec, 8)


def test_a_profile_context_without_adaptive_verification_is_refused(write_yaml):
    path = write_yaml(_scenario({**EAGLE, "adaptive_profile_context": 8192}, 2))
    r = run_cli("run", str(path))
    assert r.returncode == 2 and "cluster.pools.0.speculative.adaptive_profile_context" in r.stderr and "Traceback" not in r.stderr, r.stderr
    zero = write_yaml(_scenario({**EAGLE, **ADAPTIVE, "adaptive_profile_context": 0}, 2))
    r = run_cli("run", str(zero))
    assert r.returncode == 2 and "adaptive_profile_context" in r.stderr and "Traceback" not in r.stderr, r.stderr
