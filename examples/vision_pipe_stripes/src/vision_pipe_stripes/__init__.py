"""vision-pipe-stripes: an example vision-pipe plugin package."""

__version__ = "0.1.0"
