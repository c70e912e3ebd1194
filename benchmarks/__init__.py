"""Benchmarks of hf-kgelu: one harness (`harness.py`), one script per topic, results as data.

Run from the repository root, as modules:

    python -m benchmarks.kernel        # the op on one GPU: device time, host time per call, config sweep
    python -m benchmarks.train_step    # a training step of GPT-2 small, BERT-base, DeiT-small
    python -m benchmarks.multi_gpu     # KGeluTrainer under accelerate (DDP, FSDP2)
    python -m benchmarks.cpu           # the CPU path against F.gelu, compiler flags, annealing host time
    python -m benchmarks.report        # docs/results.md from benchmarks/results/*.csv

Each appends its rows to benchmarks/results/<machine kind>.csv (see harness.py for the schema).
"""
