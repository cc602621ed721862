import sys

from ds_plugin.cli import main

sys.exit(main())
