import sys

from siren_gateway.cli import main

sys.exit(main())
