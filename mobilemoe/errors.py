"""Errors a user can cause and fix: the CLI prints their message, without a traceback."""


class UserError(Exception):
    """Bad input (params, data files, checkpoints, job documents): the message names the
    file or key and what to do. Its text never carries a credential (URL userinfo, the
    value of a secret environment variable), whatever input it quotes."""

    def __str__(self) -> str:
        from device_lab.schema import redact

        return redact(super().__str__())
