"""The bounds every scenario value is checked against, in one place (docs/validation.md).

They are far beyond anything a real deployment needs and exist so that a typo or a hostile input
(``requests: 1e29``, a 10-million-token prefix, a 1 MB pool name) is refused with a message
naming the field instead of exhausting memory, overflowing an integer or hanging.
"""

from __future__ import annotations

MAX_TOKENS = 1_000_000_000
"""Most tokens in any length field (prompt, output, prefix, context): a billion, a hundred times the
longest context of any model."""

MAX_REQUESTS = 100_000_000
"""Most requests one simulation may generate (a day at over 1,000 requests per second)."""

MAX_SEED = 2**64 - 1
"""Largest seed: seeds are unsigned 64-bit integers."""

MAX_NAME_LENGTH = 128
"""Most characters in a pool name (it is shown in every result table)."""

MAX_COUNT = 1_000_000
"""Most instances in a pool, GPUs per instance dimension, sequences per iteration and similar
counts."""

MAX_HASH_ENTRIES = 50_000_000
"""Most prefix-block hashes (``hash_ids`` entries) a generated workload may hold, over all requests
(400 MB per copy; building them takes a few copies): sessions and shared prefixes beyond it are
refused before anything is allocated."""

MAX_YAML_DEPTH = 100
"""Deepest nesting of mappings and lists in a scenario (real ones nest fewer than ten levels)."""

MAX_YAML_NODES = 1_000_000
"""Most values a scenario may hold once its YAML aliases are expanded (a billion-laughs document
expands to billions)."""

MAX_YAML_BYTES = 16 * 2**20
"""Largest scenario file, bytes."""

MAX_TEXT_TRACE_BYTES = 4 * 2**30
"""Largest text trace (CSV, JSON Lines, JSON) read into memory, bytes."""

MAX_TIME_NS = 2**62
"""Longest span of arrival times, nanoseconds (about 146 years): a trace or generated workload
spanning more is in the wrong unit or has a bad row, and would overflow the simulator's clock."""

MAX_REPR_CHARS = 200
"""Most characters of an offending input value quoted in an error message."""
