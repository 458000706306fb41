import sys

from onecard.cli import main

sys.exit(main())
