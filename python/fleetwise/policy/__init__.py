"""The public policy API: the interfaces a policy implements, the views it reads, the decisions it
returns, registration by name and a conformance checker.

One policy object runs in the simulator (``router: {kind: policy, name: ...}`` or
``scheduler: {kind: policy, ...}`` in a scenario, or passed to :func:`fleetwise.simulate`) and in a
real serving stack (``fleetwise serve-router``, vLLM's ``scheduler_cls`` through
``fleetwise.integrations.vllm_scheduler``, a Hugging Face MoE model through
``fleetwise.integrations.hf_moe``). See docs/policy-api.md.
"""

from fleetwise.policy.decisions import RouteDecision, StepPlan
from fleetwise.policy.decode_choice import DecodeChoice, FewestOutstandingTokens
from fleetwise.policy.expert_cache import ExpertCachePolicy, LfuExpertCache, LruExpertCache, StaticExpertCache, make_expert_cache
from fleetwise.policy.prefix_cache import CachedPrefixView, LfuPrefixCache, LruPrefixCache, PrefixCachePolicy
from fleetwise.policy.registry import create, names, register, resolve
from fleetwise.policy.router import (
    Filter,
    KvUsageScorer,
    LoadScorer,
    MaxScorePicker,
    Picker,
    PrefixScorer,
    Profile,
    ProfileRouter,
    QueueFilter,
    QueueScorer,
    RandomPicker,
    RoleFilter,
    RoundRobinPicker,
    Router,
    Scorer,
)
from fleetwise.policy.scheduler import BatchScheduler, DecodeBudget, Fcfs, ShortestPromptFirst
from fleetwise.policy.views import EndpointView, RequestView, StepView

__all__ = [
    "RequestView", "EndpointView", "StepView", "RouteDecision", "StepPlan",
    "Router", "Filter", "Scorer", "Picker", "Profile", "ProfileRouter",
    "RoleFilter", "QueueFilter", "LoadScorer", "QueueScorer", "KvUsageScorer", "PrefixScorer",
    "MaxScorePicker", "RandomPicker", "RoundRobinPicker",
    "BatchScheduler", "Fcfs", "ShortestPromptFirst", "DecodeBudget",
    "PrefixCachePolicy", "CachedPrefixView", "LruPrefixCache", "LfuPrefixCache",
    "ExpertCachePolicy", "LruExpertCache", "LfuExpertCache", "StaticExpertCache", "make_expert_cache",
    "DecodeChoice", "FewestOutstandingTokens",
    "register", "create", "resolve", "names",
]
