"""``python -m bgrunner``: the same as the ``bgrunner`` command."""

import sys

from bgrunner.cli.main import main

sys.exit(main())
