"""Emitters: LR graph (after passes) -> source text. ``c.py`` renders freestanding C for CPUs."""
