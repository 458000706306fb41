"""A simulated card's EEPROM: one JSON file per card, replaced atomically. The card, the PSAM and the key master
card each say what their state is, how durable a write must be, and what to tell about a damaged file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Generic, TypeVar

from common import files

S = TypeVar("S")


class StateFile(Generic[S]):
    WHAT = "simulated card file"
    SYNC = True  # fsync: the state (a PSAM's TSN, a master card's export counter) must survive a power cut
    SORT_KEYS = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def from_json(self, doc: Any) -> S:
        raise NotImplementedError

    def to_json(self, state: S) -> Any:
        raise NotImplementedError

    def damaged(self, exc: Exception) -> str:
        """The one-line message for a file that is not a valid state (never quoting a document that holds keys)."""
        raise NotImplementedError

    def load(self) -> S:
        try:
            return self.from_json(json.loads(self.path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(self.damaged(exc)) from None

    def save(self, state: S) -> None:
        data = json.dumps(self.to_json(state), indent=1, sort_keys=self.SORT_KEYS).encode()
        try:
            files.write_atomically(self.path, data, sync=self.SYNC)
        except OSError as exc:
            self.write_failed(exc)
            raise

    def write_failed(self, exc: OSError) -> None:
        """Turn a failed write into the caller's error (the default: let the OSError through)."""
