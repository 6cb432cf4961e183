import sys

from clawql_secrets.cli import main

sys.exit(main())
