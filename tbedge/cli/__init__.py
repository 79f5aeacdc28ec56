"""tbedge command line: parse, call one function, print. No logic lives here.

Commands live in ``run`` (scoring and host checks), ``build`` (bundles) and ``train`` (training and
evaluation); ``common`` holds the apps and options they share. Errors the user caused print one line and
exit non-zero; ``--verbose`` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys

import typer

from ..errors import TbedgeError
from .common import _state, app, console

# Importing a module registers its commands, in --help's order.
for _commands in ("run", "listen", "ui", "build", "triton", "train"):
    importlib.import_module(f"{__name__}.{_commands}")

# OS errors about the paths a user gave are theirs to fix too.
USER_ERRORS: tuple = (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, TbedgeError)


def main(argv: list[str] | None = None) -> int:
    try:
        # Without standalone mode click returns a command's typer.Exit code instead of raising it.
        rc = app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except (typer.Abort, KeyboardInterrupt):
        console.print("aborted")
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into one line
        if isinstance(e, typer.TyperException) and hasattr(e, "show"):  # usage errors: typer's own text
            e.show()
            return getattr(e, "exit_code", 2)
        if _state["verbose"]:
            console.print_exception()
        if isinstance(e, USER_ERRORS):
            msg = e.one_line() if isinstance(e, TbedgeError) else " ".join(str(e).split())
            console.print(f"error: {msg}", markup=False, highlight=False, soft_wrap=True)
            return getattr(e, "exit_code", 2)
        console.print(f"error: {type(e).__name__}: {e} (run with --verbose for details)", markup=False,
                      highlight=False)
        return 1
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
