"""Sparse latency: pruned models compiled with our sparse kernels, against our dense code and
the fastest dense engine (ONNX Runtime, MNN, ncnn), interleaved, in one run.

For every model the mappings (per-layer pruning schemes, as data, in ``mappings.py``) are
solved for each target weights compression (the NPAS rates: VGG-16 8.2x, ResNet-18 5.3x,
MobileNet-V2 1.8x, and ``--rates``), compiled with ``compile_model(schemes=...)``, checked
against PyTorch's pruned model, and sampled round-robin with our dense bundle and the other
engines on the dense model (they run zeros as slowly as any weight; ``--engines-on-pruned``
shows it). Printed per thread count: compression, FLOP reduction, medians, speed-ups, GFLOP/s
on the non-zero work. With resnet18 it also times ResNet-18's 3x3 convs at 80 % unstructured
sparsity against the dense ones, step by step, both bundles in the same run.

The files, in the order a run goes through them: ``mappings.py`` (the data), ``work.py``
(arithmetic, records, pruning), ``run.py`` (one model, the thread loops, the unstructured
comparison), ``tables.py`` (printing), ``cli.py`` (arguments and ``main``).

    python -m host.bench.sparse --models resnet18 --threads 1,2 --runs 15
"""
