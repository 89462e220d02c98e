"""Errors that describe bad input. The CLI prints their message on one line; the server maps them
to gRPC status codes."""


class ZooError(Exception):
    """Bad input from a user (a path, a flag, a file's contents): the message names the problem."""


class DataError(ZooError):
    """A data file or directory that cannot be used, with the reason."""
