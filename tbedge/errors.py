"""The one base for errors a user can fix (a missing file, a bad bundle, a failed gate, a film tbedge will
not read): the CLI prints any of them as one line, ``error: <message>``, and exits 2. Anything else is a
defect and says so (exit 1, ``--verbose`` for the traceback)."""

from __future__ import annotations


class TbedgeError(Exception):
    """An error the user can fix; its message says what to do."""

    exit_code = 2

    def one_line(self) -> str:
        return " ".join(str(self).split()) or type(self).__name__
