import sys

from bess_edge.cli import main

sys.exit(main())
