"""Unlabeled corpus -> tokens -> pretrained checkpoint (Ray Data, Ray Train), and MLflow helpers."""
