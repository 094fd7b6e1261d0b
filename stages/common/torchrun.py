"""torchrun, ending with an exit code instead of a traceback: the shell's code for the signal that
stopped it (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP), the code a rank ended with (2 for bad
input), whose own message is already printed, or 2 with one line when the processes cannot meet (a
port in use). A stop the ranks honoured, or an error they reported, is not a crash."""

import signal
import sys

from stages.common.errors import STOP_SIGNALS

# How the command stops its ranks (torchrun passes on the signal it got): a stop, not a kill.
STOPS = (signal.SIGINT, *STOP_SIGNALS)


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
        return failed_ranks_code(exc.failures)
    return 0


def failed_ranks_code(failures: dict) -> int:
    """The exit code that tells what happened to the ranks (torchrun's ProcessFailure by rank), naming
    a rank a signal killed. Once one rank fails, the others fail in its wake: torchrun stops them with
    SIGTERM (143), and a rank whose collective lost its peer crashes (1). So the code comes from a rank
    killed outright if there is one (no word of its own: the out-of-memory killer, kill -9), else from a
    rank's own verdict (2 for bad input), else from a crash."""
    killed, codes = [], []
    for rank, failure in sorted(failures.items()):
        signum = -failure.exitcode if failure.exitcode < 0 else None
        if signum is not None and signum not in STOPS:
            print(f"error: rank {rank} was killed by {failure.signal_name()}; rerun the same command to resume "
                  f"from the last training checkpoint", file=sys.stderr)
            killed.append(128 + signum)
        codes.append(failure.exitcode if signum is None else 128 + signum)
    verdicts = [code for code in codes if code != 1 and code - 128 not in STOPS]
    crashes = [code for code in codes if code == 1]
    return next(iter(killed + verdicts + crashes + codes), 1)


if __name__ == "__main__":
    sys.exit(main())
