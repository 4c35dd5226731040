"""Models arrive with the catalog and billing issues."""
