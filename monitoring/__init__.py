"""Cascade\x27s monitoring: Prometheus metrics, dashboards and rules (see issue 4)."""
