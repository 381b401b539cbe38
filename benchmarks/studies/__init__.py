"""Measurements on a finished run that answer one question each (run as `python -m benchmarks.studies.X`)."""
