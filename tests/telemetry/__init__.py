"""Tests of the reusable telemetry package."""
