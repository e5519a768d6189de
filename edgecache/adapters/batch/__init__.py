"""Batch image classification with TFUP on Ray Data: a folder or S3 prefix in, JSONL/Parquet out.

    from edgecache.adapters.batch import BatchJobConfig, run_batch_job
    summary = run_batch_job(BatchJobConfig(
        input="s3://photos/2026/", output="s3://results/2026.parquet",
        class_names=("cat", "dog"), model="ViT-B-32", pretrained="/models/vit_b32.pt",
        engine="onnx"))
    print(summary.line())

or `edgecache adapters classify-images ...` (edgecache.adapters.cli).

The pipeline (every stage is a Ray Data operator, so the same code runs on one machine or on a
multi-node cluster):

    driver      list the input files (os.walk / S3 ListObjectsV2); load the model; embed the
                class prompts (text tower, prompt ensemble); ship the image tower to the
                object store (a state dict for torch, the exported graph for ONNX)
    pass 1      read bytes (local file or S3 GetObject) -> decode (PIL) -> resize + center
                crop to uint8 (tasks) -> normalise + embed (actor pool, the model loaded once
                per actor) -> materialized in the object store: path, embedding, error
    fit         the driver streams pass 1 once, keeping per class only the
                `candidate_factor * max_shots` most confident samples (zero-shot probability),
                and runs TFUP's selection on that pool. The top candidates of each class in the
                pool are those of the whole set, and the prototype score looks only at
                candidates, so the cache equals `TFUPAdapter.fit` on all embeddings while the
                driver holds O(classes x shots) vectors, not O(images)
    pass 2      classify every embedding with the fitted adapter (tasks; no re-embedding), the
                rows stream back to the driver, which writes one JSONL or Parquet file (locally,
                or uploads it to S3)

A file that cannot be read or is not a decodable image becomes an error row in pass 1 (path and
reason) and is left out of pass 2: it never fails the job. The summary (printed as one line,
written as JSON next to the output) counts files, classified images and skipped files, lists
every skipped file with its reason, and times the passes, including the seconds the read/decode
tasks and the embedding actors were busy (images per busy second = the engine's own rate).

Output rows: path, label, score (TFUP probability), zero_shot_label, zero_shot_score, top_k
(list of {label, score}), and the embedding when asked (`include_embeddings`).

Ray: `address=None` starts a local cluster bound to 127.0.0.1 (`edgecache.raycluster`) unless
this process is already connected; an address ("auto", "ray://head:10001", "host:6379") joins
an existing cluster. S3: boto3 (`edgecache.aws_stores.make_client`), credentials from the
environment of every process (driver and workers), `endpoint_url` for an S3-compatible server.

Modules: `config` (BatchJobConfig), `storage` (local/S3 listing, reading, writing), `model` (the
driver's model and the tower it ships), `decode` + `embedding` (pass 1), `fit`, `classify`
(pass 2), `output` (the JSONL/Parquet file), `summary`, `job` (run_batch_job).
"""

from .config import DEFAULT_TEMPLATES, BatchJobConfig
from .errors import BatchJobError
from .fit import Pass1, fit_from_batches
from .job import run_batch_job
from .storage import ImageLocation, list_inputs
from .summary import BatchJobSummary

__all__ = [
    "DEFAULT_TEMPLATES",
    "BatchJobConfig",
    "BatchJobError",
    "BatchJobSummary",
    "ImageLocation",
    "Pass1",
    "fit_from_batches",
    "list_inputs",
    "run_batch_job",
]
