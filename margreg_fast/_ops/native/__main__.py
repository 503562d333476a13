"""``python -m margreg_fast._ops.native``: compile the native CPU kernel now (or find it built) and print
the path of the library; for images and CI, so that no first call compiles. Exit status 1, with the
build's error, when it cannot be compiled."""
import sys

from . import load


def main() -> int:
    try:
        print(load())
    except Exception as err:  # the build's own error, whatever raised it, is the message
        print(f"margreg_fast: the native CPU kernel could not be compiled: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
