import sys

from kacfast.cli import main

sys.exit(main())
