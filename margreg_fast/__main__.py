"""``python -m margreg_fast`` runs the command-line tool (see margreg_fast.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
