"""The run folder: one cached file per stage, written atomically, keyed by its inputs."""

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"


class RunFolderError(RuntimeError):
    """The output folder cannot be used for this run."""


def stable_hash(value: Any) -> str:
    """Return a SHA-256 of a JSON-serialisable value, independent of dict order."""
    payload = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so readers never see
    half a file, also when the process is interrupted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        # mkstemp creates files with mode 0600, but run outputs are meant to be shared.
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


class RunStore:
    """Stage outputs of one run under ``folder/stages``; a stage is reused when its key matches.

    Each cached JSON file records the key of the inputs that produced it. A stage whose
    inputs changed gets a new key, so its old file is ignored and overwritten.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.stages = folder / "stages"

    def open(self, config: dict, *, resume: bool, force: bool) -> None:
        """Claim the folder for a run of ``config``.

        A folder that holds another run is refused unless ``resume`` (reuse its cached stages
        that still match) or ``force`` (delete its contents first). A non-empty folder without
        a run is always rejected, also with ``force``, so that a mistyped ``--out`` cannot delete
        unrelated files.
        """
        run_file = self.folder / RUN_FILE
        if self.folder.exists() and not self.folder.is_dir():
            raise RunFolderError(f"output path {self.folder} is a file; choose a folder for --out")
        if self.folder.exists() and any(self.folder.iterdir()):
            previous = self._read_run_file(run_file)
            if previous is None:
                raise RunFolderError(
                    f"output folder {self.folder} is not empty and holds no harmcircuit run; "
                    "choose another --out (--force only clears folders of earlier runs)"
                )
            if force:
                logger.info("--force: clearing %s", self.folder)
                shutil.rmtree(self.folder)
            elif not resume:
                raise RunFolderError(
                    f"output folder {self.folder} holds a run already; pass --resume to continue "
                    "it, --force to start over, or choose another --out"
                )
            elif previous.get("config") != config:
                logger.warning(
                    "resuming in %s with changed settings: stages whose inputs changed rerun",
                    self.folder,
                )
        self.folder.mkdir(parents=True, exist_ok=True)
        self.stages.mkdir(exist_ok=True)
        atomic_write_json(run_file, {"config": config, "config_hash": stable_hash(config)})

    @staticmethod
    def _read_run_file(path: Path) -> dict | None:
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) and "config" in value else None

    def path(self, name: str) -> Path:
        return self.stages / name

    def load_json(self, name: str, key: str) -> Any | None:
        """Return the cached value of stage ``name`` when it was made with ``key``."""
        path = self.path(f"{name}.json")
        try:
            cached = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable stage file %s: %s", path, error)
            return None
        if not isinstance(cached, dict) or cached.get("key") != key:
            return None
        return cached.get("value")

    def save_json(self, name: str, key: str, value: Any) -> None:
        atomic_write_json(self.path(f"{name}.json"), {"key": key, "value": value})

    def cached_json(self, name: str, key: str, compute: Callable[[], Any]) -> Any:
        """Return the cached value of a stage, computing and saving it when missing or stale."""
        value = self.load_json(name, key)
        if value is not None:
            logger.info("stage %s: reusing cached result", name)
            return value
        value = compute()
        self.save_json(name, key, value)
        # Read back through JSON so that a fresh and a resumed run see identical values.
        return json.loads(json.dumps(value, sort_keys=True, default=str))
