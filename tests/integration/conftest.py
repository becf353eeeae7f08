"""Integration tests against real engines: registers their markers."""


def pytest_configure(config):
    config.addinivalue_line("markers", "vllm: runs a real vLLM engine on CPU in process (slow; needs scripts/install-engines.sh)")
