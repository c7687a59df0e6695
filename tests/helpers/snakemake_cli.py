"""The workflow's `snakemake` command as the tests run it: configs, runs, dry-run job counts."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command(workdir, *args), capture_output=True, text=True, env=env(), timeout=TIMEOUT)
    return _check(result, args) if check else result


class Background:
    """`snakemake` going on in its own process group while other tests run; output in files beside `workdir`."""

    def __init__(self, workdir: Path, *args: str):
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
