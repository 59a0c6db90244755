"""``python -m inspectnet``: the command line (see :func:`inspectnet.cli.main`)."""
import sys

from inspectnet.cli import main

sys.exit(main())
