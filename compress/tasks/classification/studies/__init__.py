"""Measurements on a finished run that answer one question each (run as `python -m
compress.tasks.classification.studies.X`)."""
