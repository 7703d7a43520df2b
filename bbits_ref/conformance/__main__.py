"""``python -m bbits_ref.conformance {export,check} …`` (see :mod:`bbits_ref.conformance.cli`)."""
import sys

from .cli import main

sys.exit(main())
