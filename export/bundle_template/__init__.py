"""Files copied verbatim into every deployment bundle (see `export.bundle`)."""
