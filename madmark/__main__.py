import sys

from madmark.cli import main

sys.exit(main())
