"""``python -m fxquant.cli``: the same as the ``fxquant`` command."""

import sys

from . import main

sys.exit(main())
