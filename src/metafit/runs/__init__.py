"""The run directory: its files, checkpoints safe to load, the lock, reading a trained
run back, and reports."""
