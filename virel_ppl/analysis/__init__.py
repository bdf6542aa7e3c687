"""The analysis layer: posterior diagnostics of trained agents and multi-seed reports."""
