"""``python -m margreg_fast`` and the ``margreg-fast`` command.

* ``margreg-fast build-native``: compile the native CPU kernel of the head op now (or find it built)
  and print the path of the library; for images and CI, so that no first call compiles. Exit status 1,
  with the build's error, when it cannot be compiled.
* every other command is the experiment kit's (see margreg_fast.kit.cli). When the kit misses an
  optional dependency, the command ends (exit status 1) with a message naming the pip extra that
  installs it, not a traceback.
"""
import sys

from .kit.extras import install_hint

#: The command that compiles the native CPU kernel ahead of its first use, and its help.
BUILD_NATIVE = "build-native"
BUILD_NATIVE_HELP = (f"usage: margreg-fast {BUILD_NATIVE}\n\nCompile the native CPU kernel of the head op now (or find "
                     "it built) and print the path of the library, so that no first call compiles (images, CI). "
                     "Exit status 1, with the build's error, when it cannot be compiled.")


def build_native(argv) -> int:
    """``margreg-fast build-native``: 0 and the library's path on stdout, or 1 and the build's error on stderr."""
    if argv:
        asked = argv in (["-h"], ["--help"])
        print(BUILD_NATIVE_HELP, file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    from ._ops.native import load

    try:
        print(load())
    except Exception as err:  # the build's own error, whatever raised it, is the message
        print(f"margreg_fast: the native CPU kernel could not be compiled: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [BUILD_NATIVE]:
        return build_native(argv[1:])
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
