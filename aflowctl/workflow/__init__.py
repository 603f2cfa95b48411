"""AFlow-compatible workflows: sources and loading (:mod:`.loader`), what a graph.py
imports (:mod:`.api`), operators (:mod:`.operators`, :mod:`.registry`), the sandbox
for generated code (:mod:`.sandbox`), AFlow round folders (:mod:`.aflow_io`) and the
seed workflows (:mod:`.seeds`).

Importing this package is cheap: nothing heavy is imported here.
"""
