"""``main``: parse the arguments, run one command, turn what went wrong into an exit code.

Exit codes: 0 success; 2 a bad request or bad input (one line ``selfdenoise: error: ...`` on stderr, no
traceback, nothing written); 130 interrupted (Ctrl-C); 143 terminated (SIGTERM, from kill or a cluster
scheduler; cleaned up like Ctrl-C). Any other code means a bug.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from importlib import import_module

from ..core.errors import SelfDenoiseError
from .common import EXIT_ERROR, PROG
from .parser import COMMANDS, build_parser

EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention
EXIT_TERMINATED = 143  # 128 + SIGTERM


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        return _fail(f"give a command: {', '.join(COMMANDS[:-1])} or {COMMANDS[-1]} (try 'selfdenoise demo')")
    restore_sigterm = _raise_on_sigterm()
    try:
        if args.command != "train" and _under_torchrun():
            raise SelfDenoiseError("only 'selfdenoise train' runs under torchrun (several processes); "
                                   "run the other commands as one process")
        return int(command(args.command)(args) or 0)
    except KeyboardInterrupt as err:
        _forget_interrupt()
        if isinstance(err, _Terminated):
            return _fail("terminated; nothing was written", EXIT_TERMINATED)
        return _fail("interrupted; nothing was written", EXIT_INTERRUPTED)
    except (SelfDenoiseError, OSError) as err:  # OSError: FileNotFoundError, PermissionError, disk full...
        return _fail(_message(err))
    except MemoryError:
        return _fail("out of memory; use smaller images, --tile or --batch")
    except RuntimeError as err:
        if type(err).__name__ == "OutOfMemoryError":  # torch's, on a GPU
            return _fail("the device ran out of memory; use a smaller --tile/--batch-size or --device cpu")
        raise
    finally:
        restore_sigterm()


def command(name: str):
    """The function that runs command ``name`` (``cmd_<name>`` in the module of that name, imported only
    now: each command imports what it needs)."""
    return getattr(import_module(f"{__package__}.{name}"), f"cmd_{name}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM raised as an exception, like Ctrl-C's KeyboardInterrupt: the same cleanup runs (temporary
    outputs removed, a local cluster closed) before the exit."""


def _raise_on_sigterm():
    """Handle SIGTERM like Ctrl-C while a command runs (in the main thread: only there can Python handle
    signals); returns the function that puts the previous handler back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def terminate(number, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one is enough: let the cleanup finish
        raise _Terminated()

    previous = signal.signal(signal.SIGTERM, terminate)
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _forget_interrupt() -> None:
    """Keep a handled Ctrl-C from turning into death by SIGINT under ``python -m``.

    CPython remembers a KeyboardInterrupt that left code run by ``exec`` of a string (libraries do this
    while importing) and, under ``-m``, kills the process with SIGINT at exit even though we handled it:
    the exit status would be -2, not 130. Running any string resets that flag.
    """
    exec("pass")  # noqa: S102 -- a constant string; running one is the point (see above)


def _under_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1  # not core.training.distributed's: that imports torch


def _message(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None:
        reason = err.strerror or str(err)
        return f"{reason.lower() if reason else 'cannot access'}: {err.filename}"
    return " ".join(str(err).split()) or type(err).__name__


def _fail(message: str, code: int = EXIT_ERROR) -> int:
    sys.stderr.flush()
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code
