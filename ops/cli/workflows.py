"""`sluice workflows ...`: filled in by its issue."""
