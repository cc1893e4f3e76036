"""Resumable evaluation state: one JSON file per unit of work, written atomically after every batch.

A *unit* is one (model, threat model, attack, eps) -- or a model's checks, or its clean pass. The
harness cuts each unit into batches (*chunks*); after every chunk the unit's file is rewritten
atomically (temporary file + ``os.replace``), then the index ``state.json``. An interrupted run
(Ctrl-C, crash, killed job) therefore loses at most the chunk in flight, and a rerun with the same
settings continues from the last saved chunk. Because each chunk's randomness is derived from the
run seed and the chunk's name (never from how far the run got), a resumed run writes exactly the
records an uninterrupted run would.

Layout of ``state_dir``::

    state.json              EvalState: version, fingerprint of the settings, units done / partial
    units/<digest>.json     UnitState: records of the chunks done, seconds, metadata
    examples/<model>.npz    example images for the report's grid (optional)

Every unit also carries the fingerprint of what its records depend on (its model and gray-box
source, the examples, the seed, the batch size, its attack and eps: :func:`unit_fingerprint`), so a
state folder written with *other* settings is reused unit by unit: adding a model, an attack or an
eps to a long evaluation, or retraining one model, recomputes only the units whose inputs changed,
and a unit is never reused unless everything it depends on is the same. The folder keeps the units
of both runs (the file name includes the unit's fingerprint), so going back to the first settings
recomputes nothing. A version-1 state (written before units had fingerprints) is resumed with its
own settings, which stamps each unit it loads with its fingerprint; with other settings it is refused
with an error (until every unit is stamped) rather than silently mixed in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pssr.utils import atomic_write_bytes, atomic_write_json

log = logging.getLogger(__name__)

STATE_VERSION = 2
_READABLE_VERSIONS = (1, 2)  # 1: units without their own fingerprints (resumable with the same settings only)


@dataclass
class UnitState:
    """Progress of one unit: the records of its finished chunks, in order."""

    key: str
    chunks_done: int = 0
    n_chunks: int | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0  # wall-clock seconds summed over finished chunks
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. the attack's config, gradient_free
    fp: str = ""  # unit_fingerprint() of what the records depend on ("" in a version-1 state)

    @property
    def complete(self) -> bool:
        return self.n_chunks is not None and self.chunks_done >= self.n_chunks

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UnitState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class EvalState:
    """The index of a state folder."""

    fingerprint: str
    settings: dict[str, Any]
    version: int = STATE_VERSION
    units: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {"file", "complete", "fp"}


def fingerprint(settings: dict[str, Any]) -> str:
    """A stable digest of the JSON-able ``settings``."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def unit_fingerprint(depends_on: dict[str, Any]) -> str:
    """The fingerprint of one unit: a digest of everything its records depend on (JSON-able)."""
    return fingerprint({"unit": depends_on})


def _digest(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:20]


class StateStore:
    """Reads and writes an evaluation state folder; ``None`` folder = keep everything in memory."""

    def __init__(self, state_dir: str | Path | None, settings: dict[str, Any]) -> None:
        self.dir = Path(state_dir) if state_dir is not None else None
        self.settings = settings
        self._fp = fingerprint(settings)
        self._units: dict[str, UnitState] = {}
        self.state = EvalState(fingerprint=self._fp, settings=settings)
        self._trust_unfingerprinted = True  # a version-1 unit (no fp) is valid only under its own settings
        if self.dir is not None:
            self._open()

    def _open(self) -> None:
        assert self.dir is not None
        index = self.dir / "state.json"
        if not index.exists():
            self.dir.mkdir(parents=True, exist_ok=True)
            atomic_write_json(index, dataclasses.asdict(self.state))
            return
        try:
            raw = json.loads(index.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(
                f"evaluation state {index} is unreadable ({e}); delete {self.dir} to start over"
            ) from e
        version = raw.get("version")
        if version not in _READABLE_VERSIONS or not isinstance(raw.get("units"), dict):
            raise ValueError(
                f"evaluation state in {self.dir} has version {version!r} (this pssr reads "
                f"{_READABLE_VERSIONS}); use another state_dir, or delete {self.dir} to start over"
            )
        same = raw.get("fingerprint") == self._fp
        if not same and any(not u.get("fp") for u in raw["units"].values()):
            raise ValueError(
                f"evaluation state in {self.dir} was written with different settings "
                f"(models, data, attacks, eps, seed, ...) by a pssr whose units carry no fingerprints, so none can be "
                f"reused safely; use another state_dir, or delete {self.dir} to start over"
            )
        # Units written with other settings stay in the index: load() reuses those whose fingerprint
        # matches, and going back to the other settings finds the rest.
        self.state = EvalState(
            fingerprint=self._fp, settings=self.settings, version=STATE_VERSION, units=raw["units"]
        )
        self._trust_unfingerprinted = same
        n_done = sum(1 for u in self.state.units.values() if u.get("complete"))
        log.info(
            "%s evaluation state %s: %d unit(s) complete, %d partial%s",
            "resuming" if same else "reusing",
            self.dir,
            n_done,
            len(self.state.units) - n_done,
            "" if same else " (other settings: a unit is reused only where its own inputs are unchanged)",
        )

    @property
    def persistent(self) -> bool:
        return self.dir is not None

    def load(self, key: str, fp: str = "") -> UnitState:
        """The saved progress of unit ``key`` whose inputs have the fingerprint ``fp``
        (:func:`unit_fingerprint`); a fresh unit when none is saved or the saved one had other inputs."""
        cached = self._units.get(key)
        if cached is not None and cached.fp == fp:
            return cached
        unit = UnitState(key=key, fp=fp)
        entry = self._entry(key, fp)
        if self.dir is not None and entry is not None:
            path = self.dir / "units" / entry["file"]
            try:
                unit = UnitState.from_dict(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError) as e:
                raise ValueError(
                    f"evaluation state file {path} is unreadable ({e}); delete {self.dir} to start over"
                ) from e
            if unit.key != key:
                raise ValueError(f"evaluation state file {path} holds unit {unit.key!r}, expected {key!r}")
            unit.fp = fp
        self._units[key] = unit
        return unit

    def _entry(self, key: str, fp: str) -> dict[str, Any] | None:
        """The index entry of ``key`` saved with inputs ``fp``: the current one, or one kept from a run
        with other settings (``units`` also holds ``key#fp`` entries for those)."""
        for k in (key, f"{key}#{fp}"):
            entry = self.state.units.get(k)
            if entry is None:
                continue
            saved = entry.get("fp", "")
            if saved == fp:
                return entry
            if not saved and self._trust_unfingerprinted and fp:
                # a version-1 unit under its own settings: stamp it, so that a later run with other
                # settings can reuse it too
                entry["fp"] = fp
                if self.dir is not None:
                    atomic_write_json(self.dir / "state.json", dataclasses.asdict(self.state))
                return entry
        return None

    def save(self, unit: UnitState) -> None:
        """Persist ``unit`` atomically (unit file first, then the index that points at it)."""
        self._units[unit.key] = unit
        if self.dir is None:
            return
        fname = _digest(f"{unit.key}#{unit.fp}" if unit.fp else unit.key) + ".json"
        atomic_write_json(self.dir / "units" / fname, dataclasses.asdict(unit), indent=0)
        old = self.state.units.get(unit.key)
        if old is not None and old.get("fp") and old.get("fp") != unit.fp:
            # the same unit computed with other inputs: keep it findable for those settings
            self.state.units[f"{unit.key}#{old['fp']}"] = old
        self.state.units[unit.key] = {"file": fname, "complete": unit.complete, "fp": unit.fp}
        atomic_write_json(self.dir / "state.json", dataclasses.asdict(self.state))

    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        if self.dir is None:
            return
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        atomic_write_bytes(self.dir / "examples" / f"{_digest(name)}.npz", buf.getvalue())

    def load_arrays(self, name: str) -> dict[str, np.ndarray] | None:
        if self.dir is None:
            return None
        path = self.dir / "examples" / f"{_digest(name)}.npz"
        if not path.exists():
            return None
        with np.load(path) as z:
            return {k: z[k] for k in z.files}


__all__ = ["EvalState", "StateStore", "UnitState", "fingerprint", "unit_fingerprint"]
