"""Built-in vision-pipe stages."""
