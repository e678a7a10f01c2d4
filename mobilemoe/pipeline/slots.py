"""Running heavy local work one (or N) at a time: ``cpu_slot``.

Metaflow runs parallel branches (eval | device_profile | dense_baseline) at once, and a
scaling sweep runs several trainings; on a small machine they would fight over the cores
(and a profile measured beside a busy evaluation is wrong). A file lock per slot in a
folder on this machine serialises them. The folder is local on purpose, whatever the
artifact store is: the lock guards this machine's cores, and file locks need a local
file system.

    with cpu_slot(params.runtime.parallel_workers, slot_folder(root)):
        ...  # heavy work
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import IO, Optional


def slot_folder(root: str | Path) -> Path:
    """This project's lock folder on this machine (per user: lock files are theirs)."""
    project = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"mobilemoe-slots-{os.getuid()}-{project}"


class cpu_slot:
    """Hold one of ``workers`` slots while doing heavy local work.

    ``local=False`` (the work happens elsewhere, e.g. a remote device lab) takes no slot.
    A slot is released when the block ends or the process dies (the lock goes with it).
    """

    def __init__(self, workers: int, folder: str | Path, local: bool = True, poll_s: float = 0.5):
        self.n, self.dir, self.local, self.poll_s = workers, Path(folder), local, poll_s
        self.fh: Optional[IO[str]] = None

    def __enter__(self) -> cpu_slot:
        if not self.local:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        while True:
            for i in range(self.n):
                fh = open(self.dir / f"slot-{i}.lock", "w")
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.fh = fh
                    return self
                except BlockingIOError:
                    fh.close()
            time.sleep(self.poll_s)

    def __exit__(self, *exc) -> None:
        if self.fh is not None:
            self.fh.close()  # releases the lock
            self.fh = None
