"""Labeled tasks -> fine-tuned models and sweeps (Ray Tune)."""
