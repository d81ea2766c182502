"""Parameter files: ``.npz`` arrays plus a JSON manifest, written atomically, read without
pickle. A corrupted, truncated or pickled file gives a clear error, never a traceback."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from rnnlang.codegen.load import atomic_write
from rnnlang.diagnostics import error

MANIFEST = "__manifest__"


def save_arrays(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    buf = io.BytesIO()
    payload = {k: np.asarray(v) for k, v in arrays.items()}
    manifest = dict(meta, arrays=sorted(payload))
    payload[MANIFEST] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    np.savez(buf, **payload)
    atomic_write(path, buf.getvalue())


def load_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise error("E610", f"{path}: no such file", None) from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise error("E611", f"{path} is not a valid rnnlang parameter file ({exc})", None,
                    hint="it may be truncated or corrupted; pickled data is never loaded") from None
    raw = arrays.pop(MANIFEST, None)
    if raw is None:
        raise error("E611", f"{path} has no rnnlang manifest", None)
    try:
        manifest = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise error("E611", f"{path} has a damaged manifest", None) from None
    if sorted(arrays) != manifest.get("arrays"):
        raise error("E611", f"{path}: arrays do not match its manifest", None)
    return arrays, manifest
