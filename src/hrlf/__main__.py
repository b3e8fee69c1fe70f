"""``python -m hrlf``: the same command line as the ``hrlf`` script."""

import sys

from hrlf.cli import main

sys.exit(main())
