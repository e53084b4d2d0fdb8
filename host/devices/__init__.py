"""Devices the host can measure on: the local runner, phones through adb (and later qemu)."""
