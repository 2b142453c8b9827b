"""Many `tinythinker` command lines run one after another in one fresh interpreter.

Each command line is a real CLI call (click parses it, the command runs, a TinyThinkerError becomes one
``Error:`` line and exit status 2), in a process whose environment is set before anything is imported,
as for a subprocess of its own; only the interpreter start and the imports (about 3 s of torch,
transformers and datasets) are paid once for the batch instead of once per line. An exception that
escapes a command is appended to its stderr as the traceback a real process would print.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Sequence

RUNNER = r"""
import json, sys, traceback
from click.testing import CliRunner
from tinythinker.cli import main

results = []
for argv in json.loads(sys.stdin.read()):
    result = CliRunner().invoke(main, argv, catch_exceptions=True)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (most recent call last):\n" + "".join(traceback.format_exception(result.exception))
    results.append({"returncode": result.exit_code, "stdout": result.stdout, "stderr": stderr})
print(json.dumps(results))
"""


def file_permissions_bind() -> list[str] | None:
    """The command prefix under which file permissions bind as for a user: none for a user, and for root
    ``setpriv`` without the capabilities that override them (root stays root for everything else);
    None where that cannot be had (root without setpriv)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else None


def run_many(command_lines: Sequence[Sequence[object]], *, env: dict, cwd: Path, timeout: float = 600,
             prefix: Sequence[str] = ()) -> list[subprocess.CompletedProcess]:
    """The outcome of each command line (``tinythinker`` left out), as ``subprocess.run`` would give it;
    ``prefix``: what the interpreter is started under (:func:`file_permissions_bind`)."""
    argvs = [[str(arg) for arg in line] for line in command_lines]
    done = subprocess.run([*prefix, sys.executable, "-c", RUNNER], input=json.dumps(argvs), env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return [subprocess.CompletedProcess(["tinythinker", *argv], r["returncode"], r["stdout"], r["stderr"])
            for argv, r in zip(argvs, results)]
