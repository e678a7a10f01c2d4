"""Errors a user can cause and fix: the CLI prints their message, without a traceback."""


class UserError(Exception):
    """Bad input (params, data files, checkpoints, job documents): the message names the
    file or key and what to do."""
