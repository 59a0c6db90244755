import sys

from inspectnet.cli import main

sys.exit(main())
