"""Errors a user can fix. The CLI prints their message on one line and exits with code 2."""


class PipelineError(Exception):
    """Bad input: the message names the file, key or value at fault and how to fix it."""


class ProfileError(PipelineError):
    """A profile that cannot be read or does not validate."""


class DataError(PipelineError):
    """A dataset that is missing or malformed."""


class ArtifactError(PipelineError):
    """An artifact that is missing or cannot be used."""
