"""The one base of the errors a user can fix.

:class:`HrlfError` marks a user mistake (a bad path, file, option or recipe) or an environment problem (a missing
optional package, an unprepared asset, a dead worker process). ``hrlf`` (:func:`hrlf.cli.main`) reports any of them
as one line ``error: ...`` on stderr with exit code 2 and no traceback; every other exception is a bug and keeps its
traceback. This module imports nothing, so the command line can catch the base without importing torch.
"""

from __future__ import annotations


class HrlfError(Exception):
    """A user mistake or environment problem, said in one line; the CLI prints ``error: ...`` and exits with 2.

    Subclasses keep a second, built-in base (``ValueError`` for bad input, ``RuntimeError`` for the environment),
    so callers that catch those still do.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a scheduler's job end) during a command, handled as Ctrl-C is (``hrlf.cli`` raises it
    from its SIGTERM handler): a bench stops its worker processes, a cluster bench cancels its tasks, files are left
    whole, instead of the process vanishing and its workers training on. The CLI exits with 143."""
