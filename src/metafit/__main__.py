"""``python -m metafit`` (also ``torchrun -m metafit``): the ``metafit`` command."""

from metafit.cli.main import main

raise SystemExit(main())
