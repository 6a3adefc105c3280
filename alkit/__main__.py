"""``python -m alkit`` runs the command line."""

import sys

from alkit.cli import main

sys.exit(main())
