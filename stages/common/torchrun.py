"""torchrun, ending with the shell's code for the signal that stopped it (130 for Ctrl-C, 143 for
SIGTERM) instead of a traceback: a stop that the ranks honoured is not a crash."""

import sys


def main() -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.run import main as torchrun

    try:
        torchrun(sys.argv[1:])
    except SignalException as exc:
        return 128 + int(exc.sigval)
    return 0


if __name__ == "__main__":
    sys.exit(main())
