"""``python -m bbits_ref.cli`` runs the ``bbits-ref`` command."""
import sys

from bbits_ref.cli import main

sys.exit(main())
