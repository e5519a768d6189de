"""Pass 1's read/decode stage (Ray Data tasks): file path -> uint8 crop, or the reason it has none."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .storage import read_file


def load_batch(
    batch: dict[str, np.ndarray], transform: dict[str, Any], endpoint_url: str | None, max_bytes: int
) -> dict[str, np.ndarray]:
    """path -> (uint8 crop, error). Every failure becomes the row's error text, never an exception:
    one bad file must not fail the task and with it the job."""
    from botocore.exceptions import BotoCoreError, ClientError

    from ..openclip import InvalidImageError, decode_image, resize_crop_fn

    t0 = time.perf_counter()
    crop = resize_crop_fn(transform)
    h, w = transform["crop"]
    paths = [str(p) for p in batch["path"]]
    pixels = np.zeros((len(paths), h, w, 3), dtype=np.uint8)
    errors = []
    for i, path in enumerate(paths):
        try:
            blob = read_file(path, endpoint_url, max_bytes)
        except (OSError, ValueError, ClientError, BotoCoreError) as exc:
            errors.append(f"unreadable: {type(exc).__name__}: {exc}")
            continue
        try:
            pixels[i] = crop(decode_image(blob))
            errors.append("")
        except InvalidImageError as exc:
            errors.append(str(exc))
        except Exception as exc:  # PIL raises assorted types on hostile files
            errors.append(f"not a decodable image: {type(exc).__name__}: {exc}")
    # Per-row share of this batch's wall time: summed by the driver into the busy time of the stage.
    busy = np.full(len(paths), (time.perf_counter() - t0) / max(1, len(paths)))
    return {
        "path": np.asarray(paths, dtype=object),
        "pixels": pixels,
        "error": np.asarray(errors, dtype=object),
        "read_s": busy,
    }
