"""Errors a user can fix. The CLI prints their message on one line and exits with code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (or its type's name), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PipelineError(Exception):
    """Bad input: the message names the file, key or value at fault and how to fix it."""


class ProfileError(PipelineError):
    """A profile that cannot be read or does not validate."""


class DataError(PipelineError):
    """A dataset that is missing or malformed."""


class ArtifactError(PipelineError):
    """An artifact that is missing or cannot be used."""
