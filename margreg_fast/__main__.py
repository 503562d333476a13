"""``python -m margreg_fast`` runs the command-line tool (see margreg_fast.kit.cli)."""
import sys

from .kit.cli import main

if __name__ == "__main__":
    sys.exit(main())
