"""A run's summary and plots."""
