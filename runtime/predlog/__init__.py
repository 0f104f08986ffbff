"""The prediction log's writer: a process of its own (``python -m runtime.predlog``), started by the router.

The router samples requests (each model's ``log_rate``) and hands each sampled one over as a record of
raw bytes (:mod:`runtime.predlog.records` has the layout) on a Unix socket, never waiting: when the
writer falls behind, the router drops records and counts them. Here records are decoded with the
workers' own codecs into rows (:mod:`~runtime.predlog.records`) and written to rotating Parquet files
(:mod:`~runtime.predlog.files`); every second that anything changed, the writer reports its totals
back (:mod:`~runtime.predlog.process`).
"""
