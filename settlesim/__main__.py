import sys

from settlesim.cli import main

sys.exit(main())
