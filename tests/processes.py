"""What a test that stops a command checks afterwards: which of its processes still run."""

from pathlib import Path


def processes_naming(text: str, with_pid: bool = False) -> list[str]:
    """Command lines of this machine's processes that contain ``text``; ``with_pid``: each as "PID
    COMMAND LINE ENVIRONMENT"."""
    found = []
    for folder in Path("/proc").glob("[0-9]*"):
        try:
            line = (folder / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if with_pid:
                line = f"{folder.name} {line} {(folder / 'environ').read_bytes().replace(bytes(1), b' ').decode()}"
        except OSError:  # the process ended meanwhile
            continue
        if text in line:
            found.append(line)
    return found
