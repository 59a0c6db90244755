"""Training and fine-tuning with interpretability plugins."""
