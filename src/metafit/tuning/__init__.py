"""Hyperparameter search: spaces, Optuna studies and their report (``tune`` extra)."""
