"""The ``distributed`` backend: one process per device, real collectives.

``protocol`` (commands and results exchanged through the store), ``worker`` (what each
rank runs), ``group`` (starting, watching and stopping the rank processes) and
``backend`` (the CostBackend rank 0 offers)."""
