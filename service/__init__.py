"""hitl: human review of APVs."""

__version__ = "0.1.0"
