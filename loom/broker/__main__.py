import sys

from loom.broker.cli import main

sys.exit(main())
