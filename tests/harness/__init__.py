"""Test harnesses for real engines: tiny offline Hugging Face models (``tiny_models``) and real vLLM
servers started as subprocesses (``vllm_servers``). Used by the tests only; not part of the package."""
