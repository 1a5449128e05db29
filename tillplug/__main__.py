import sys

from tillplug.commands.cli import main

sys.exit(main())
