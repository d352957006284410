"""``python -m minivae`` and the ``minivae`` command.

``main`` imports the command line here, inside its own Ctrl-C handler: loading NumPy, the model
and the plotting libraries takes a second, and a Ctrl-C in that second should end the program as
quietly as one later on (``minivae.cli.main`` handles those).
"""

import signal
import sys


def _terminated(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the program as Ctrl-C does: exit 130, one line


def main() -> int:
    signal.signal(signal.SIGTERM, _terminated)  # training installs its own handler while it steps
    try:
        from minivae.cli import EXIT_INTERRUPTED, INTERRUPTED_MESSAGE
        from minivae.cli import main as cli_main
    except KeyboardInterrupt:
        print("minivae: interrupted", file=sys.stderr)  # cli's INTERRUPTED_MESSAGE, not yet loaded
        return 130  # cli's EXIT_INTERRUPTED
    try:
        return cli_main()
    except KeyboardInterrupt:  # between cli_main's handler and here: still a clean exit
        print(INTERRUPTED_MESSAGE, file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
