"""``python -m vision_pipe.cli ...`` (e.g. under ``torchrun``): the same as the ``vision-pipe`` command."""

from vision_pipe.cli import main

raise SystemExit(main())
