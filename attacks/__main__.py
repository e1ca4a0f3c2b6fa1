"""``python -m attacks --config audit.toml …``: the attack matrix (same as ``fedistill audit``)."""

import sys

from attacks.cli import main

sys.exit(main())
