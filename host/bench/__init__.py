"""Benchmarks that compare NPAS bundles with other inference engines on the same machine.

``dense``: dense (unpruned) latency of ours against PyTorch, ONNX Runtime, MNN and ncnn,
interleaved in one run. ``engines`` holds one converter/loader per other engine; every engine's
package is imported lazily, so a missing one is reported, not fatal.
"""
