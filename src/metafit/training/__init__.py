"""Meta-training: the Trainer and its callbacks."""
