"""Orchestration written once: train a model on training tasks, then compare placers on
unseen tasks (``experiment``), and the built-in main job (``demo``). The CLI and the
benchmark call these."""
