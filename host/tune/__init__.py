"""The auto-tuner: a genetic algorithm over each layer's tuning parameters, measured on a
device's runner, and the tuning database that keeps what it found.

``db`` (the records, their keys and the ``compile_model(tuning=...)`` lookup), ``ga`` (the pure
genetic operators), ``tuner`` (the measuring loop), ``command`` (`npas-host tune`). Nothing is
imported here, so the CLI's parser stays light (the tuner imports torch).
"""
