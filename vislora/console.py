"""What a user sees when a command stops: one line on stderr and an exit status, never a traceback.

    status = guarded(lambda: command(argv))

    VisloraError (a refused flag, file or data)   "error: ..."                                   2
    OSError (disk full, permission, read-only)     "error: <file>: <reason> (<what to do>)"       1
    KeyboardInterrupt (Ctrl-C)                     "interrupted"                                  130
    BrokenPipeError (`vislora inspect F | head`)   nothing: the reader has gone                   141
    anything else (a bug)                          "error: internal error ...; rerun with --debug" 1

`vislora --debug COMMAND ...` (or VISLORA_DEBUG=1, which also reaches the processes of `accelerate launch`)
lets every exception through with its traceback.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Callable

from .errors import VisloraError

DEBUG_ENV = "VISLORA_DEBUG"
USAGE, FAILED, INTERRUPTED, BROKEN_PIPE = 2, 1, 130, 141

_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space, or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere",
    errno.EACCES: "permission denied: choose a path you can write, or fix its permissions",
    errno.EPERM: "not permitted: choose a path you can write, or fix its permissions",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "a folder where a file was expected",
    errno.ENOTDIR: "a file where a folder was expected",
}


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def describe_os_error(e: OSError) -> str:
    """`<file>: <reason> (<what to do>)`, the file first, as the other errors name theirs."""
    where = f"{e.filename}: " if e.filename else ""
    reason = e.strerror or _one_line(str(e)) or type(e).__name__
    hint = _OS_HINTS.get(e.errno or -1)
    return f"{where}{reason}" + (f" ({hint})" if hint and hint != reason.lower() else "")


def _silence_stdout() -> None:
    """The reader of stdout has gone: point stdout at /dev/null, so that Python's own flush at exit does not
    print a second BrokenPipeError (the recipe in Python's signal documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def guarded(call: Callable[[], int]) -> int:
    """call(); every way it can stop becomes one line on stderr and an exit status (see the module doc)."""
    if debugging():
        return call()
    try:
        status = call()
        sys.stdout.flush()  # a reader that has gone shows here, not in Python's flush at exit
        return status
    except VisloraError as e:
        print(f"error: {_one_line(str(e))}", file=sys.stderr)
        return USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE
    except OSError as e:
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return FAILED
    except Exception as e:  # a bug: still one line, and the way to see more
        print(f"error: internal error ({type(e).__name__}: {_one_line(str(e))[:300]}); rerun with "
              "`vislora --debug ...` for the traceback, and report it", file=sys.stderr)
        return FAILED
