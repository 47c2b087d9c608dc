"""TorchRec integration: plan files and ``ShardingPlan`` export/loading (``plan``) and the
drop-in ``DreamShardPlanner`` (``planner``).

Imports evaluation (the placement file), placers, the method, data and the core."""
