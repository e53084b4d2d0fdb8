"""`npas-host tune`: the command (``command``) and the device Session behind the tuner's
``codegen.Measurer`` (``measurer``). The tuner, its genetic algorithm, the tuning space and the
database are compiler knowledge and live in ``codegen/autotune``. Nothing is imported here, so
the CLI's parser stays light (the tuner imports torch).
"""
