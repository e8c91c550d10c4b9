import sys

from cgn.cli import main

sys.exit(main())
