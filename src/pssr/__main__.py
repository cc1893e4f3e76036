import sys

from pssr.cli import main

sys.exit(main())
