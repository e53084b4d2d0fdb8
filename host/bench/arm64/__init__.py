"""The arm64 guest side of the benchmarks: an arm64 Python under qemu-aarch64."""
