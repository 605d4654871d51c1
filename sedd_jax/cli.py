"""What the command-line entry points share: their name in their help, a help that shows every flag's default,
and how they fail. An expected failure is one `error: ...` line on stderr and exit status 1 (with `--verbose`,
the traceback first); a bad flag is one usage line and one error line, exit status 2 (absl: its one
`FATAL Flags parsing error` line and a hint, exit status 1).

argparse entry points build their parser with `ArgumentParser(module, script, __doc__)` and run their body with
`report_errors(body, args.verbose)`; absl ones call `run_absl(main, module, script)`.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
import types
from typing import Callable

# MemoryError: a compiled step that does not fit the device (progress.report_memory).
EXPECTED_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, ImportError, RuntimeError, OSError,
                   MemoryError)
VERBOSE_HELP = "on an error, also print its traceback (an expected error is otherwise one line)"
HELP_ARGS = frozenset({"-h", "--help", "-help", "--helpshort", "-helpshort", "-?"})


def report_errors(body: Callable[[], int | None], verbose: bool = False) -> int:
    """Runs `body` and returns its exit status (None: 0); an expected failure prints `error: <message>` on one
    line to stderr (after its traceback when `verbose`) and returns 1 (unexpected ones keep their traceback)."""
    try:
        return body() or 0
    except EXPECTED_ERRORS as e:
        if verbose:
            traceback.print_exc()
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 1


def prog(module: str, script: str) -> str:
    """The command as the user typed it: the console script `script` (e.g. `sedd-sample`) when it runs, else
    `python -m module`."""
    return script if sys.argv and os.path.basename(sys.argv[0]) == script else f"python -m {module}"


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks and ends a flag's help with `(default: ...)` unless the flag is
    required, has no default (None, or off for a switch) or its help already names the default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.required or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or "default" in text):
            return text
        return text + " (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with `prog` as the user ran it, the whole module docstring as description, defaults in the help
    and `--verbose`; a bad flag prints one usage line (the required flags) and one error line, exit status 2."""

    def __init__(self, module: str, script: str, doc: str):
        super().__init__(prog=prog(module, script), description=doc, formatter_class=HelpFormatter)
        self.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)

    def error(self, message: str):
        required = [f"{a.option_strings[0]}={a.metavar or a.dest.upper()}" for a in self._actions if a.required]
        usage = " ".join([self.prog, *required, "[flags]"])
        self.exit(2, f"usage: {usage}  (`{self.prog} --help` lists the flags)\n{self.prog}: error: {message}\n")


def run_absl(main: Callable[[list[str]], int | None], module: types.ModuleType, script: str,
             argv: list[str] | None = None) -> None:
    """`absl.app.run(main)` for the command line whose flags `module` defines (imported, or run as `python -m`),
    adding `--verbose` and `report_errors` around `main`.

    `--help` (`-h`, `--helpshort`) prints `module`'s docstring and its flags with their defaults to stdout and
    exits 0: absl's own exits 1, and under a console script shows neither, since `__main__` is then the script's
    wrapper. `--helpfull` stays absl's (every flag, absl's included)."""
    from absl import app, flags

    argv = list(sys.argv if argv is None else argv)
    key = sys.argv[0] if module.__name__ == "__main__" else module.__name__  # absl's name for the flags' module
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_bool("verbose", False, VERBOSE_HELP[0].upper() + VERBOSE_HELP[1:] + ".", module_name=key)
    given = argv[1:argv.index("--")] if "--" in argv else argv[1:]
    if HELP_ARGS.intersection(given):
        command = prog(module.__spec__.name if module.__spec__ else module.__name__, script)
        flag_lines = flags.FLAGS.module_help(module).strip().splitlines()[1:]  # [0] names the module
        print(f"usage: {command} [flags]\n\n{(module.__doc__ or '').strip()}\n\nflags:\n" + "\n".join(flag_lines)
              + f"\n\n`{command} --helpfull` also lists absl's own flags.")
        sys.exit(0)
    app.run(lambda args: report_errors(lambda: main(args), flags.FLAGS.verbose), argv=argv)
