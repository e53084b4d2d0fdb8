"""Benchmarks that compare NPAS bundles with other inference engines on the same machine.

``dense``: dense (unpruned) latency of ours against PyTorch, ONNX Runtime, MNN and ncnn,
interleaved in one run. ``sparse/``: pruned models on our sparse kernels against our dense code
and the fastest dense engine. ``common``: what both share (argument checks, the EngineRun
record, loading and checking an engine, interleaved sampling). ``engines`` holds one
converter/loader per other engine; every engine's package is imported lazily, so a missing one
is reported, not fatal. ``strategies``: the search strategies against each other.
``command``: ``npas-host bench dense|sparse``.
"""
