"""The protocol kernel: what the router, the workers and the clients share.

Errors (and their status codes), the router <-> worker link frames, length-prefixed
framing (compiled, with its pure-Python twin) and the model metadata format
(``meta.json``, the datatype table). Nothing here imports from above this
package: a worker or a client that imports it loads none of the daemon.
"""

#: The HTTP reply header, and the fifth item of a msgpack reply frame, carry the generation of the
#: configuration that served (``config.toml``'s ``generation``: router/sharedconfig.py).
GENERATION_HEADER = "Router-Config-Generation"
