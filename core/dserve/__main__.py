import sys

from dserve.cli import main

sys.exit(main())
