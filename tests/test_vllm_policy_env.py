"""``FLEETWISE_VLLM_POLICY`` (the policy ``vllm serve --scheduler-cls
fleetwise.integrations.vllm_scheduler.FleetwiseScheduler`` runs): a name that cannot give a policy
is refused with an error naming the variable, before vLLM's engine core would fail on it. Needs
vLLM installed (the adapter imports it); no engine is started."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from fleetwise.integrations import vllm_scheduler  # noqa: E402
from fleetwise.policy.scheduler import ShortestPromptFirst  # noqa: E402


@pytest.mark.parametrize("spec, message", [
    ("nonexistent_fleetwise_mod:x", "cannot import nonexistent_fleetwise_mod"),
    (":x", "must be 'package.module:name'"),
    ("fleetwise.policy:nope", "fleetwise.policy has no attribute nope"),
    ("os:getcwd", "getcwd made '"),  # a factory that makes no policy
    ("os:sep", "not a policy (no plan(step) method), a class or a factory"),
    ("datetime:date", "calling date() with no arguments failed: TypeError"),
])
def test_a_policy_variable_that_gives_no_policy_is_named_in_the_error(monkeypatch, spec, message):
    monkeypatch.setenv(vllm_scheduler.POLICY_ENV, spec)
    with pytest.raises(ValueError, match="FLEETWISE_VLLM_POLICY") as e:
        vllm_scheduler._policy_from_env()
    assert message in str(e.value), e.value


def test_a_policy_class_is_instantiated(monkeypatch):
    monkeypatch.setenv(vllm_scheduler.POLICY_ENV, "fleetwise.policy.scheduler:ShortestPromptFirst")
    assert isinstance(vllm_scheduler._policy_from_env(), ShortestPromptFirst)


def test_a_policy_module_that_fails_while_importing_is_named(monkeypatch, tmp_path):
    (tmp_path / "fw_badsyntax.py").write_text("def broken(:\n")
    (tmp_path / "fw_raises.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for spec, says in [("fw_badsyntax:X", "cannot import fw_badsyntax: SyntaxError"), ("fw_raises:X", "cannot import fw_raises: RuntimeError: boom at import")]:
        monkeypatch.setenv(vllm_scheduler.POLICY_ENV, spec)
        with pytest.raises(ValueError, match="FLEETWISE_VLLM_POLICY") as e:
            vllm_scheduler._policy_from_env()
        assert says in str(e.value), e.value
