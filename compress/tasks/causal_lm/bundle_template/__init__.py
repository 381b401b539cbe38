"""Files copied verbatim into every deployment bundle (see `compress.tasks.classification.bundle`)."""
