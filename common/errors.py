"""The error every command turns into one line on stderr and a non-zero exit, and what each exit status means
(the same for every `onecard` command; README, "Exit status")."""

EXIT_OK = 0
EXIT_REFUSED = 1  # the command ran and the answer is no: a check or verification failed, a card or SAM refused
EXIT_USAGE = 2  # the command cannot run as given: a bad option, a missing or unreadable file, a device not found
EXIT_AWAITING_CERTIFICATE = 3  # provisioning: the CSR is written, the platform operator's certificate is awaited
EXIT_INTERRUPTED = 130  # Ctrl-C


class UserError(Exception):
    """Something the person running the command can fix; the message names the problem and the fix."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


class RecordNotWritten(Exception):
    """A durable record (an event log append) did not happen: disk full, I/O error, file locked too long.

    Raised by the storage adapter (terminal.event_log.LogWriteError); caught by flows that must not act without a
    record, which need not import the storage module to do so."""
