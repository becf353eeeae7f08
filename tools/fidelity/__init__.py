"""fleetwise against real GPUs: the fits behind the catalogue and the serving-fidelity comparison.

* ``operator_fit``: fits each measured GPU's calibration (``calibration/<gpu>/``) and writes it to
  ``calibration/<gpu>/fitted.yaml``, the catalogue and ``docs/fidelity.md``;
* ``measure_collectives`` and ``measure_host_link``: NCCL all-reduce and send/receive between
  the GPUs of one machine (``calibration/h200x2/``, the catalogue's ``collective``) and pinned
  host-to-GPU copies (``calibration/h100/host_link.csv``, docs/moe.md); PyTorch only;
* ``torch_engine``: the command line of a small PyTorch continuous-batching engine that replays
  traces on a GPU (``torch_serving``: the engine and its scheduling; ``torch_batches``: sequences
  and batch layout; ``torch_graphs``: CUDA-graph capture; ``torch_engine_setup``: attention choice,
  warm-up, spot timings), serving the Llama of ``torch_model`` (all PyTorch only, copied to the GPU
  machine together);
* ``grid``: times that engine's iterations on a grid of shapes (PyTorch only);
* ``serving_fit``: fits the engine's factors on the grid (``calibration/h100/serving/fitted.yaml``);
* ``compare``: simulates the traces with fleetwise and compares with the engine's measurements
  (``docs/serving-fidelity.md``).
"""
