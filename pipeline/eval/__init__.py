"""Using a trained model: scoring it (evaluate) and sampling from it (generate)."""
