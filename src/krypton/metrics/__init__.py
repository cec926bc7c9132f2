"""Metrics: plain counters on the hot path, Prometheus families at scrape time.

How this works
--------------
Nothing on a request's path calls ``prometheus_client``. Each event loop (one
per gateway worker, one per Core) counts into plain Python integers and lists
(:class:`~krypton.metrics.meter.KmipMeter`, :class:`~krypton.metrics.meter.Histogram`):
a dict increment and a ``bisect`` per batch item, a few hundred nanoseconds.
Only when someone scrapes ``/metrics`` does the admin thread read those
numbers (copies taken under the GIL, never a lock on the hot path) into
:class:`~krypton.metrics.meter.Family` records, which
:mod:`krypton.metrics.export` turns into ``prometheus_client`` metric families
(a custom collector). Families are plain data (JSON), so the workers of one
gateway can hand theirs to whichever worker answered the scrape.
"""
