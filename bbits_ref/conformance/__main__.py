"""``python -m bbits_ref.conformance {export,check} …`` (see :mod:`bbits_ref.conformance.cli`)."""
import sys

from bbits_ref.conformance.cli import main

sys.exit(main())
