"""``python -m margreg_fast`` and the ``margreg-fast`` command run the command-line tool (see margreg_fast.kit.cli).

When the experiment kit misses an optional dependency, the command ends (exit status 1) with a
message naming the pip extra that installs it, not a traceback.
"""
import sys

from .kit.extras import install_hint


def main(argv=None) -> int:
    try:
        from .kit.cli import main as cli_main

        return cli_main(argv)
    except ModuleNotFoundError as err:
        hint = install_hint(err)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
