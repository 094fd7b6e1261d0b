"""torchrun, ending with an exit code instead of a traceback: the shell's code for the signal that
stopped it (130 for Ctrl-C, 143 for SIGTERM), the code a rank ended with (2 for bad input), whose own
message is already printed, or 2 with one line when the processes cannot meet (a port in use). A stop
the ranks honoured, or an error they reported, is not a crash."""

import signal
import sys


def main() -> int:
    from torch.distributed import DistNetworkError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(sys.argv[1:])
    except DistNetworkError as exc:  # the rendezvous: a port taken, node 0 out of reach
        message = str(exc).strip().splitlines()[-1]
        print(f"error: torchrun could not connect its processes ({message}); if another run holds the port, "
              f"pass a free one with --master-port; on several nodes, check --master-addr", file=sys.stderr)
        return 2
    except SignalException as exc:
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = []
        for rank, failure in sorted(exc.failures.items()):
            # Killed by a signal, with no word of its own (the out-of-memory killer, kill -9). SIGTERM is
            # what torchrun itself sends the other ranks once one has failed.
            if failure.exitcode < 0 and -failure.exitcode not in (signal.SIGTERM, signal.SIGINT):
                print(f"error: rank {rank} was killed by {failure.signal_name()}; rerun the same command to resume "
                      f"from the last training checkpoint", file=sys.stderr)
            codes.append(failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode)
        # torchrun stops the other ranks once one fails, and they end with 143: the code that tells
        # what happened is another one, where there is one.
        return next((code for code in codes if code not in (130, 143)), codes[0] if codes else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
