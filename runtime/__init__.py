"""The worker process: one model version on one device, serving the router (``python -m runtime``).

It imports only the protocol kernel (:mod:`router.proto`) from the router package,
and never the model tools of :mod:`modelkit`.
"""
