"""``python -m metafit.cli``."""

from metafit.cli.main import main

raise SystemExit(main())
