"""The ``adafocus bench`` subcommands."""
