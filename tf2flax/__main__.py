"""``python -m tf2flax``: the command line (see :mod:`tf2flax.cli`)."""

from .cli import main

raise SystemExit(main())
