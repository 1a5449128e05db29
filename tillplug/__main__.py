import sys

from tillplug.cli import main

sys.exit(main())
