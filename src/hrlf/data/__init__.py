"""Data: the field's standard files read safely, synthetic data in their exact schema, datasets and loaders."""
