"""The ``sim`` backend: a calibrated analytical simulator of fused TBE costs.

``profile`` (a calibration for one kind of hardware: ``SimProfile``, its JSON
format, the packaged profiles), ``model`` (the analytical model of a shard's forward and
backward costs and ``SimBackend`` on it) and ``fit`` (fitting a profile to measured
shards and reporting its errors)."""
