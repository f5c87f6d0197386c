"""A one-line progress bar on stderr, drawn only when stderr is a terminal (never in logs or CI output).
It shows counts only: no patient ids or other PHI."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total_bytes: int, files: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.total_bytes = max(total_bytes, 1)
        self.files = files
        self.done_bytes = 0
        self.lines = 0
        self.patients = 0
        self.stage = "screening"
        self._start = time.monotonic()
        self._drawn = 0.0

    def advance(self, *, bytes_done: int = 0, lines: int = 0, patients: int = 0, stage: str | None = None) -> None:
        self.done_bytes += bytes_done
        self.lines += lines
        self.patients += patients
        if stage:
            self.stage = stage
        self.draw()

    def draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._drawn < 0.2):
            return
        self._drawn = now
        share = min(self.done_bytes / self.total_bytes, 1.0)
        bar = "#" * int(share * 30)
        self.stream.write(
            f"\r{self.stage:<11} [{bar:<30}] {share:6.1%}  {self.files} files  {self.lines:,} lines  "
            f"{self.patients:,} patients  {now - self._start:5.0f} s"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
