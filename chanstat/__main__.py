"""``python -m chanstat`` is the ``chanstat`` command."""

from chanstat.cli import main

raise SystemExit(main())
