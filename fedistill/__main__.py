import sys

from fedistill.cli import main

sys.exit(main())
