"""The DreamShard method (METHOD.md section 4): the cost network, the policy, the
estimated MDP built from them, the training loop and the model checkpoint.

Imports data and the core; never a backend (the trainer is handed one)."""
