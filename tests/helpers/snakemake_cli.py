"""The workflow's `snakemake` command as the tests run it: configs, runs, dry-run job counts.

`snakemake()` and `run_cli()` run the real command line (`snakemake.cli.main` with the same
arguments, working directory and environment) in a process forked from a server that has imported
snakemake and what the Snakefile imports once (see `_Server`): a `snakemake` process spends about
5 of the 6-8 s of a dry run importing those, and the suite runs dozens of them. Each run is a
fresh fork of the server as it was after its imports, so no run sees another's state; jobs are
the workflow's own `tilesam` processes as always.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the environment's snakemake and tilesam


def env(**extra: str) -> dict[str, str]:
    """This process's environment with the environment's bin/ first on PATH (the rules call `tilesam`)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **extra}


TIMEOUT = 1800  # seconds for one run


def command(workdir: Path, *args: str) -> list[str]:
    """`snakemake` on the repository's Snakefile in `workdir` (its config/config.yaml), two cores."""
    return [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(workdir), "--cores", "2", *args]


def _check(result: subprocess.CompletedProcess, args: tuple[str, ...]) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


#: The server: imports, then per request line (JSON: args, cwd, env, stdout and stderr files) forks
#: a child that runs `snakemake <args>` in its own session and process group, and answers two lines:
#: the child's pid, then its exit status once it has ended.
_SERVER_CODE = r"""
import json, os, sys, traceback
import snakemake.cli  # snakemake's CLI, API, DAG and scheduler
import snakemake_interface_executor_plugins.registry
import tilesam.config, tilesam.device, tilesam.plan  # what the Snakefile imports (workflow/rules/common.smk)
replies = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setsid()
            replies.close()  # the server's
            os.chdir(req["cwd"])
            os.environ.clear()
            os.environ.update(req["env"])
            for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY), (2, req["stderr"], os.O_WRONLY)):
                os.dup2(os.open(path, flags), fd)
            sys.argv = ["snakemake", *req["args"]]
            snakemake.cli.main(req["args"])
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(json.dumps({"pid": pid}), file=replies, flush=True)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}), file=replies, flush=True)
"""


class _Server:
    """The fork server of `run_cli`, started on first use; it ends with this process (its stdin closes)."""

    _proc: subprocess.Popen | None = None

    @classmethod
    def proc(cls) -> subprocess.Popen:
        if cls._proc is None or cls._proc.poll() is not None:
            cls._proc = subprocess.Popen(
                [sys.executable, "-c", _SERVER_CODE],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env(),
                text=True,
                bufsize=1,
            )
            atexit.register(cls.stop)
        return cls._proc

    @classmethod
    def stop(cls) -> None:
        if cls._proc is not None and cls._proc.poll() is None:
            cls._proc.stdin.close()
            cls._proc.wait(timeout=60)

    @classmethod
    def reply(cls, timeout: float | None) -> dict:
        proc = cls.proc()
        if timeout is not None and not select.select([proc.stdout], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the snakemake fork server ended (exit status {proc.wait()})")
        return json.loads(line)


def run_cli(
    args: list[str], cwd: Path, extra_env: dict[str, str] | None = None, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess:
    """`snakemake <args>` in `cwd` with `env(**extra_env)`, run by the fork server: its exit status and output.

    Past `timeout` its process group gets SIGTERM (then SIGKILL) and TimeoutExpired is raised.
    """
    with tempfile.TemporaryDirectory(prefix="snakemake-cli-") as tmp:
        out, err = Path(tmp, "stdout"), Path(tmp, "stderr")
        out.touch()
        err.touch()
        request = {"args": list(args), "cwd": str(cwd), "env": env(**(extra_env or {}))}
        _Server.proc().stdin.write(json.dumps({**request, "stdout": str(out), "stderr": str(err)}) + "\n")
        _Server.proc().stdin.flush()
        pid = _Server.reply(60)["pid"]
        try:
            returncode = _Server.reply(timeout)["returncode"]
        except subprocess.TimeoutExpired:
            for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(pid, sig)
                    _Server.reply(wait)
                    break
                except ProcessLookupError:
                    _Server.reply(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
            raise
        return subprocess.CompletedProcess(
            ["snakemake", *args], returncode, out.read_text(errors="replace"), err.read_text(errors="replace")
        )


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = run_cli(command(workdir, *args)[1:], cwd=Path.cwd())
    return _check(result, args) if check else result


class Background:
    """`snakemake` going on in its own process group while other tests run; output in files beside `workdir`.

    niceness: added to its (and so its jobs') CPU niceness, so that it takes the cores the tests leave idle.
    """

    def __init__(self, workdir: Path, *args: str, niceness: int = 0):
        self.workdir, self.args = workdir, args
        self.out, self.err = workdir.with_suffix(".out"), workdir.with_suffix(".err")
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                command(workdir, *args),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env(),
                start_new_session=True,
                preexec_fn=(lambda: os.nice(niceness)) if niceness else None,
            )
        self.deadline = time.monotonic() + TIMEOUT

    def wait(self) -> subprocess.CompletedProcess:
        """Its result once it has ended (AssertionError if it failed or ran past TIMEOUT)."""
        try:
            self.proc.wait(timeout=max(1.0, self.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
        result = subprocess.CompletedProcess(
            self.proc.args,
            self.proc.returncode,
            self.out.read_text(errors="replace"),
            self.err.read_text(errors="replace"),
        )
        return _check(result, self.args)

    def stop(self) -> None:
        """End it if it is still going: SIGTERM (snakemake then stops its jobs), then SIGKILL."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def write_config(workdir: Path, config: dict) -> None:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Jobs per rule from the 'Job stats' table of a dry run."""
    table = dry_run_output.split("Job stats:")[1]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M) if m[0] != "total"}
