"""Evaluation: placers compared on measured costs (``evaluate``), the placement file
(``placement_file``) and TorchRec's own estimates of placements (``torchrec_estimates``).

Imports placers, backends, data and the core."""
