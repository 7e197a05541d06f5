"""Turn one uploaded image into the config's ladder of variants, with pyvips, off the loop."""
