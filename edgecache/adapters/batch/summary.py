"""`BatchJobSummary`: what a run did, as one line and as JSON."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class BatchJobSummary:
    """What a run did: counts, timings, the cache it built, every skipped file and why."""

    input: str
    output: str
    output_format: str
    engine: str
    model: str
    fingerprint: str
    files: int
    classified: int
    skipped: int
    errors: list[dict[str, str]]
    classes: list[str]
    shots: int
    cache_size: int
    cache_per_class: dict[str, int]
    label_counts: dict[str, int]
    zero_shot_label_counts: dict[str, int]
    changed_by_tfup: int
    pass1_s: float
    fit_s: float
    pass2_s: float
    total_s: float
    embed_images_per_s: float
    read_busy_s: float
    embed_busy_s: float
    embed_busy_images_per_s: float
    actors: int
    adapter_path: str | None = None
    summary_path: str | None = None

    def line(self) -> str:
        return (
            f"classified {self.classified} of {self.files} files, skipped {self.skipped} "
            f"(not readable/decodable); pass 1 (embed, {self.engine}, {self.actors} actor(s)) "
            f"{self.pass1_s:.1f} s = {self.embed_images_per_s:.1f} images/s; TFUP cache "
            f"{self.cache_size} ({self.shots}/class); pass 2 (classify) {self.pass2_s:.1f} s; "
            f"TFUP changed {self.changed_by_tfup} zero-shot labels; total {self.total_s:.1f} s "
            f"-> {self.output}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
