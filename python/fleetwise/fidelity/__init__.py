"""Serving fidelity: a small PyTorch serving engine (``torch_engine``) and the comparison of its
measured request latencies with fleetwise's simulation of the same traces (``compare``)."""
