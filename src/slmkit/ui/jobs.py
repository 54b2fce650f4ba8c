"""Background jobs of the board: `slm train|eval|export …` as child processes with a log file and a
job.json on disk, so the page never blocks and a reloaded page finds its job again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from slmkit.child_process import describe_exit, last_error_line, log_text, spawn_lasting
from slmkit.train.run_index import pid_alive

STOP_GRACE_S = 20.0


@dataclass
class Job:
    """One `slm` child process started from the board."""

    id: str
    kind: str  # train | eval | export
    argv: list[str]
    pid: int
    log: str
    target: str  # the folder it writes (run folder, eval report folder, export folder)
    started: float
    returncode: int | None = None

    @property
    def folder(self) -> Path:
        return Path(self.log).parent


@dataclass
class JobState:
    status: str  # running | finished | failed | stopped
    message: str


class JobRunner:
    """Starts, lists, watches and stops the board's jobs (one folder per job under `folder`)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, argv: list[str], target: Path | str) -> Job:
        """Run `slm <argv>` in the background; its output goes to the job's log.txt."""
        job_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}-{os.urandom(2).hex()}"
        folder = self.folder / job_id
        folder.mkdir(parents=True)
        log_path = folder / "log.txt"
        env_cmd = [sys.executable, "-m", "slmkit.cli", *argv]
        with open(log_path, "wb") as log:
            proc = spawn_lasting(env_cmd, log)
        job = Job(job_id, kind, argv, proc.pid, str(log_path), str(target), time.time())
        with self._lock:
            self._procs[job_id] = proc
        self._save(job)
        threading.Thread(target=self._reap, args=(job, proc), daemon=True).start()
        return job

    def _reap(self, job: Job, proc: subprocess.Popen[bytes]) -> None:
        job.returncode = proc.wait()
        self._save(job)

    def _save(self, job: Job) -> None:
        path = job.folder / "job.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(job), indent=2))
        tmp.replace(path)

    def jobs(self, kind: str | None = None) -> list[Job]:
        """Every job on disk, newest first."""
        found = []
        for path in self.folder.glob("*/job.json"):
            try:
                job = Job(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if kind is None or job.kind == kind:
                found.append(job)
        return sorted(found, key=lambda j: j.started, reverse=True)

    def get(self, kind: str, job_id: str) -> Job | None:
        """The job of `kind` with this id (None when its folder is gone)."""
        return next((j for j in self.jobs(kind) if j.id == job_id), None)

    def latest(self, kind: str) -> Job | None:
        jobs = self.jobs(kind)
        return jobs[0] if jobs else None

    def is_running(self, job: Job) -> bool:
        proc = self._procs.get(job.id)
        if proc is not None:
            return proc.poll() is None
        return job.returncode is None and pid_alive(job.pid)

    def state(self, job: Job) -> JobState:
        """running, finished, stopped (by the user) or failed with the CLI's one-line error."""
        if self.is_running(job):
            return JobState("running", f"{job.kind} running (pid {job.pid})")
        proc = self._procs.get(job.id)
        code = proc.returncode if proc is not None else job.returncode
        if code == 0:
            return JobState("finished", f"{job.kind} finished")
        if code in (130, -signal.SIGINT, -signal.SIGTERM):
            return JobState("stopped", f"{job.kind} stopped")
        if code is None:
            return JobState("stopped", f"{job.kind} ended with the board that started it")
        return JobState("failed", self.error_line(job) or f"{job.kind} {describe_exit(code)}")

    def error_line(self, job: Job) -> str:
        """The last `error: …` line the child printed (the CLI's one-line message)."""
        return last_error_line(job.log)

    def log_text(self, job: Job, max_bytes: int = 6000) -> str:
        return log_text(job.log, max_bytes)

    def stop(self, job: Job) -> None:
        """Ctrl-C for the child (a training keeps its last checkpoint), then SIGTERM after a grace."""
        if not self.is_running(job):
            return
        os.kill(job.pid, signal.SIGINT)
        threading.Thread(target=self._kill_later, args=(job,), daemon=True).start()

    def _kill_later(self, job: Job) -> None:
        deadline = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < deadline:
            if not self.is_running(job):
                return
            time.sleep(0.2)
        if self.is_running(job):
            os.kill(job.pid, signal.SIGTERM)
