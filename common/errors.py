"""The error every command turns into one line on stderr and a non-zero exit."""


class UserError(Exception):
    """Something the person running the command can fix; the message names the problem and the fix."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
