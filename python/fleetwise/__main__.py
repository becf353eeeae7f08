"""``python -m fleetwise`` runs the command line."""

import sys

try:
    from fleetwise.cli import main
except KeyboardInterrupt:  # Ctrl-C while still importing (a slow, loaded machine): no traceback
    sys.stderr.write("interrupted\n")
    sys.exit(130)

main()
