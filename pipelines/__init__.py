"""Pipeline wiring: options and one module per pipeline (run with ``python -m``)."""
