"""The output file: classified rows as JSONL or Parquet, locally or uploaded to S3."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .config import BatchJobConfig
from .storage import ImageLocation, upload_file


class ResultWriter:
    """One output file written by the driver from streamed rows, always to a temporary file first:
    an s3:// target's is uploaded when the job finishes, a local target's (in the target's folder)
    renamed over it; so a failed job leaves nothing, and an earlier output is kept intact."""

    def __init__(self, config: BatchJobConfig, dim: int) -> None:
        self.config = config
        self.target = ImageLocation.parse(config.output)
        self.fmt = config.output_format
        if self.target.is_s3:
            fd, name = tempfile.mkstemp(suffix="." + self.fmt)
        else:
            final = Path(self.target.key).expanduser()
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
        os.close(fd)
        self.local = Path(name)
        self.rows = 0
        self._json = None
        self._parquet = None
        if self.fmt == "jsonl":
            self._json = open(self.local, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            fields = [
                ("path", pa.string()),
                ("label", pa.string()),
                ("score", pa.float64()),
                ("zero_shot_label", pa.string()),
                ("zero_shot_score", pa.float64()),
                ("top_k", pa.list_(pa.struct([("label", pa.string()), ("score", pa.float64())]))),
            ]
            if config.include_embeddings:
                fields.append(("embedding", pa.list_(pa.float32(), dim)))
            self.schema = pa.schema(fields)
            self._parquet = pq.ParquetWriter(str(self.local), self.schema)

    def write(self, batch: dict[str, np.ndarray]) -> None:
        n = len(batch["path"])
        if not n:
            return
        top = [
            [{"label": str(lab), "score": float(s)} for lab, s in zip(labs, scores, strict=True)]
            for labs, scores in zip(batch["top_k_labels"], batch["top_k_scores"], strict=True)
        ]
        cols: dict[str, list[Any]] = {
            "path": [str(p) for p in batch["path"]],
            "label": [str(x) for x in batch["label"]],
            "score": [float(x) for x in batch["score"]],
            "zero_shot_label": [str(x) for x in batch["zero_shot_label"]],
            "zero_shot_score": [float(x) for x in batch["zero_shot_score"]],
            "top_k": top,
        }
        if self.config.include_embeddings:
            cols["embedding"] = [list(map(float, e)) for e in np.asarray(batch["embedding"])]
        if self._json is not None:
            for i in range(n):
                self._json.write(json.dumps({k: v[i] for k, v in cols.items()}) + "\n")
        else:
            import pyarrow as pa

            self._parquet.write_table(pa.Table.from_pydict(cols, schema=self.schema))
        self.rows += n

    def close(self) -> None:
        if self._json is not None:
            self._json.close()
        if self._parquet is not None:
            self._parquet.close()

    def commit(self) -> None:
        try:
            self.close()
            if self.target.is_s3:
                upload_file(self.local, str(self.target), self.config.endpoint_url)
            else:
                os.replace(self.local, Path(self.target.key).expanduser())
        finally:
            self.local.unlink(missing_ok=True)

    def abort(self) -> None:
        try:
            self.close()
        finally:
            self.local.unlink(missing_ok=True)
