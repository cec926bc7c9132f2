"""``krypton bench``: a KMIP load generator over mutual TLS, and a ceiling to compare with.

Modules: :mod:`wire` (precomputed requests, the cheap response check),
:mod:`worker` (one load process: uvloop, ``BufferedProtocol``),
:mod:`runner` (the parent: setup, worker processes, progress, merge),
:mod:`stats` (percentiles, KPI fractions, the report), :mod:`plot` (the PNG),
:mod:`ceiling` (the cheapest KMIP-shaped responder), :mod:`cli` (the flags).
"""
