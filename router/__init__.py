"""model-router: a low-latency model-serving router with A/B splits, shadow traffic and blue-green pools."""

__version__ = "0.1.0"
