"""open_clip image/text backend for the TFUP adapter, and an ONNX export of its image tower.

    backend = OpenCLIPBackend.from_pretrained("ViT-B-32", "laion2b_s34b_b79k")      # a tag
    backend = OpenCLIPBackend.from_pretrained("ViT-B-32", "/models/vit_b32.pt")    # a local file
    w = backend.class_embeddings(["cat", "dog"], ["a photo of a {}."])
    f = backend.embed([jpeg_bytes, ...])                    # (n, d) unit float32
    adapter = TFUPAdapter.fit(w, f, fingerprint=backend.fingerprint)

`OpenCLIPBackend` implements serve's `FeatureBackend` for both modalities: `bytes` items are
encoded images (decoded with PIL, preprocessed with the model's own eval transform), `str` items
are texts (the model's tokenizer). Outputs are unit-normalised float32. An item that is not a
decodable image raises `InvalidImageError` (an `InvalidInputError` carrying the item's index);
`embed_images(..., skip_invalid=True)` instead skips such items and returns them, for batch jobs
that count and go on.

Weights. `from_pretrained` is open_clip's own loading code,
`open_clip.create_model_and_transforms(model_name, pretrained=tag_or_path)`: a pretrained tag is
downloaded from the Hugging Face hub (or read from its local cache), a path to a local checkpoint
(.pt / .bin / .safetensors) is loaded from disk. Where the hub is unreachable a tag raises
`WeightsUnavailableError` (open_clip retries for about a minute first); with `HF_HUB_OFFLINE=1`
and a populated hub cache it loads without the network. `pretrained=None` builds the architecture
with random weights (useful for throughput measurements only).

`tiny(seed)` builds a small randomly initialised CLIP (`TINY_CONFIG`, registered under
`TINY_MODEL`) without any download: for tests and CI, where no pretrained weights exist.

`fingerprint` = sha256 over the model config and every state_dict tensor (name, dtype, shape,
bytes): an adapter fitted with one set of weights is refused by a backend with another.

ONNX: `export_image_onnx(backend, path)` exports the image tower (pixels -> unit embedding,
opset 17, dynamic batch by default) and checks it numerically against torch on a random batch;
`OnnxImageBackend(path)` embeds images with onnxruntime alone (no torch): it reproduces the eval
transform in numpy/PIL from what the export records in the model's metadata, and carries the torch
backend's fingerprint so a saved adapter works with either.

Ray Serve: `tiny_backend`, `image_backend` (model + tag or checkpoint) and `onnx_backend` (an
exported tower) are factories for `TFUPClassifier`'s `backend="edgecache.adapters.openclip:..."`.
`resize_crop_fn` + `normalize_pixels` split the numpy eval transform so that the batch job
(edgecache.adapters.batch) ships uint8 crops between processes and normalises where the model runs.

torch and open_clip are imported lazily: importing this module (or `edgecache.adapters`) needs
neither.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, EdgecacheError, InvalidInputError
from .tfup import ensemble_prompts

Item = str | bytes

__all__ = [
    "TINY_CONFIG",
    "TINY_MODEL",
    "InvalidImageError",
    "OnnxExportReport",
    "OnnxImageBackend",
    "OpenCLIPBackend",
    "WeightsUnavailableError",
    "decode_image",
    "export_image_onnx",
    "image_backend",
    "normalize_pixels",
    "onnx_backend",
    "resize_crop_fn",
    "tiny_backend",
    "transform_params",
]

TINY_MODEL = "edgecache-tiny-clip"
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
DEFAULT_TEMPLATES = ("a photo of a {}.",)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_META_PREFIX = "edgecache."


class InvalidImageError(InvalidInputError):
    """An item that is not a decodable image; `index` is its position in the batch."""

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class WeightsUnavailableError(EdgecacheError, RuntimeError):
    """Pretrained weights that could not be fetched (no network to the hub, no local cache)."""


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the open_clip backend needs torch: pip install open_clip_torch") from exc
    return torch


def _open_clip() -> Any:
    try:
        import open_clip
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the open_clip backend needs open_clip: pip install open_clip_torch") from exc
    return open_clip


def decode_image(blob: Any, index: int | None = None) -> Any:
    """Encoded image bytes -> RGB PIL image; anything else raises InvalidImageError."""
    from PIL import Image

    where = "" if index is None else f"item {index}: "
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise InvalidImageError(f"{where}an image must be encoded bytes, got {type(blob).__name__}", index)
    if len(blob) == 0:
        raise InvalidImageError(f"{where}empty image bytes", index)
    try:
        with Image.open(io.BytesIO(bytes(blob))) as img:
            img.load()
            return img.convert("RGB")
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImageError(
            f"{where}not a decodable image ({len(blob)} bytes): {type(exc).__name__}: {exc}", index
        ) from exc


def _fingerprint(model_name: str, config: Any, state_dict: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps({"model": model_name, "config": config}, sort_keys=True, default=str).encode())
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != _torch().bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def transform_params(backend: OpenCLIPBackend) -> dict[str, Any]:
    """The backend's eval transform as plain values (resize, crop, mean, std, interpolation), for
    `resize_crop_fn` / `normalize_pixels` where the transform runs without torch."""
    return _transform_params(backend.preprocess)


def _transform_params(preprocess: Any) -> dict[str, Any]:
    """image size / mean / std / interpolation of an open_clip eval transform (Resize, CenterCrop,
    RGB, ToTensor, Normalize), for the numpy re-implementation used by the ONNX backend."""
    from torchvision import transforms as T

    out: dict[str, Any] = {}
    for t in getattr(preprocess, "transforms", []):
        if isinstance(t, T.Resize):
            size = t.size
            if isinstance(size, list | tuple):
                size = size[0] if len(size) == 1 else list(size)
            out["resize"] = size if isinstance(size, list) else int(size)
            out["interpolation"] = str(t.interpolation.value)
        elif isinstance(t, T.CenterCrop):
            out["crop"] = [int(s) for s in t.size]
        elif isinstance(t, T.Normalize):
            out["mean"] = [float(x) for x in t.mean]
            out["std"] = [float(x) for x in t.std]
    if not {"resize", "crop", "mean", "std"} <= set(out) or isinstance(out["resize"], list):
        raise ConfigError(f"cannot describe the transform {preprocess!r} for the ONNX backend")
    return out


class OpenCLIPBackend:
    """An open_clip model as a TFUP FeatureBackend (images as bytes, texts as str)."""

    name = "open_clip"
    modalities = frozenset({"image", "text"})

    def __init__(
        self,
        model: Any,
        preprocess: Any,
        tokenizer: Any,
        model_name: str,
        config: Any = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        torch = _torch()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.config = config
        self.batch_size = batch_size
        with torch.inference_mode():
            self.dim = int(self.model.encode_text(tokenizer(["x"]).to(self.device)).shape[-1])
        self.fingerprint = _fingerprint(model_name, config, self.model.state_dict())

    # ------------------------------------------------------------ constructors

    @classmethod
    def from_pretrained(
        cls,
        model_name: str,
        pretrained: str | os.PathLike | None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> OpenCLIPBackend:
        """open_clip's `create_model_and_transforms(model_name, pretrained=...)`.

        `pretrained`: a tag of `open_clip.list_pretrained_tags_by_model(model_name)` (downloaded
        from the hub or read from its cache), a path to a local checkpoint file, or None (random
        weights)."""
        open_clip = _open_clip()
        if model_name not in open_clip.list_models() and not model_name.startswith(("hf-hub:", "local-dir:")):
            raise ConfigError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        source: str | None
        if pretrained is None:
            source = None
        else:
            text = os.fspath(pretrained)
            path = Path(text).expanduser()
            if path.is_file():
                source = str(path)
            elif isinstance(pretrained, os.PathLike) or os.sep in text or text.endswith(_CHECKPOINT_SUFFIXES):
                raise ConfigError(f"checkpoint file not found: {path}")
            else:
                tags = open_clip.list_pretrained_tags_by_model(model_name)
                if tags and text not in tags:
                    raise ConfigError(f"{model_name} has no pretrained tag {text!r}; known tags: {tags}")
                source = text
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=source, device=device
            )
        except RuntimeError as exc:
            message = str(exc)
            if source is not None and not Path(source).is_file() and "download" in message.lower():
                raise WeightsUnavailableError(
                    f"cannot fetch pretrained weights {model_name}/{source}: {message}. Download the "
                    "checkpoint on a machine that reaches huggingface.co and pass its file path, or "
                    "set HF_HUB_OFFLINE=1 with a populated Hugging Face cache."
                ) from exc
            raise ConfigError(f"cannot load open_clip {model_name} ({source}): {message}") from exc
        tokenizer = open_clip.get_tokenizer(model_name)
        config = open_clip.get_model_config(model_name)
        return cls(model, preprocess, tokenizer, model_name, config, device, batch_size)

    @classmethod
    def tiny(cls, seed: int = 0, device: str = "cpu", batch_size: int = 64) -> OpenCLIPBackend:
        """A small randomly initialised CLIP (`TINY_CONFIG`), no download: for tests and CI."""
        torch = _torch()
        open_clip = _open_clip()
        register_model_config(TINY_MODEL, TINY_CONFIG)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL, pretrained=None)
        tokenizer = open_clip.get_tokenizer(TINY_MODEL)
        return cls(model, preprocess, tokenizer, TINY_MODEL, TINY_CONFIG, device, batch_size)

    # ------------------------------------------------------------ embedding

    def _run(self, batches: list[Any], encode: Callable[[Any], Any]) -> np.ndarray:
        torch = _torch()
        out = []
        with torch.inference_mode():
            for x in batches:
                f = encode(x.to(self.device)).float()
                out.append(torch.nn.functional.normalize(f, dim=-1).cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(np.concatenate(out), dtype=np.float32)

    def pixels(self, images: Sequence[Any]) -> Any:
        """PIL images -> the model's input tensor (n, 3, H, W)."""
        torch = _torch()
        return torch.stack([self.preprocess(im) for im in images])

    def embed_pil(self, images: Sequence[Any]) -> np.ndarray:
        bs = self.batch_size
        batches = [self.pixels(images[i : i + bs]) for i in range(0, len(images), bs)]
        return self._run(batches, self.model.encode_image)

    def embed_images(
        self, blobs: Sequence[Any], skip_invalid: bool = False
    ) -> tuple[np.ndarray, np.ndarray, list[InvalidImageError]]:
        """Encoded images -> (embeddings, indices of the embedded items, errors of skipped items).

        skip_invalid=False raises the first InvalidImageError; True skips and returns them."""
        images, kept, errors = [], [], []
        for i, blob in enumerate(blobs):
            try:
                images.append(decode_image(blob, i))
                kept.append(i)
            except InvalidImageError as exc:
                if not skip_invalid:
                    raise
                errors.append(exc)
        return self.embed_pil(images), np.asarray(kept, dtype=np.int64), errors

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        if any(not isinstance(t, str) for t in texts):
            raise InvalidInputError("texts must be strings")
        bs = self.batch_size
        batches = [self.tokenizer(list(texts[i : i + bs])) for i in range(0, len(texts), bs)]
        return self._run(batches, self.model.encode_text)

    def embed(self, items: list[Item]) -> np.ndarray:
        """str items -> text embeddings, bytes items -> image embeddings, rows in input order."""
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        text_idx = [i for i, x in enumerate(items) if isinstance(x, str)]
        image_idx = [i for i, x in enumerate(items) if not isinstance(x, str)]
        if text_idx:
            out[text_idx] = self.embed_texts([items[i] for i in text_idx])
        if image_idx:
            images = [decode_image(items[i], i) for i in image_idx]
            out[image_idx] = self.embed_pil(images)
        return out

    def class_embeddings(
        self, class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
    ) -> np.ndarray:
        """(C, d) class embeddings: every template filled with every class name, embedded, and
        ensembled per class (`ensemble_prompts`)."""
        names, temps = list(class_names), list(templates)
        if not names or not temps:
            raise InvalidInputError("class_embeddings needs at least one class name and one template")
        prompts = [t.format(c) for c in names for t in temps]
        e = self.embed_texts(prompts).reshape(len(names), len(temps), self.dim)
        return ensemble_prompts(e)


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make an open_clip model config (the tiny test model, a custom config shipped with a job)
    known to `open_clip.create_model` under `name`, unless open_clip already knows that name.
    The one place that writes open_clip's private config registry."""
    open_clip = _open_clip()
    if open_clip.get_model_config(name) is None:
        from open_clip import factory

        factory._MODEL_CONFIGS[name] = json.loads(json.dumps(config))


# ---------------------------------------------------------------- ONNX


@dataclass(frozen=True)
class OnnxExportReport:
    path: str
    opset: int
    batch: int | None
    checked_batch: int
    max_abs_diff: float
    min_cosine: float


def export_image_onnx(
    backend: OpenCLIPBackend,
    path: str | os.PathLike,
    batch: int | None = None,
    opset: int = 17,
    check_batch: int = 4,
    min_cosine: float = 0.9999,
    seed: int = 0,
) -> OnnxExportReport:
    """Export the image tower (pixels (n, 3, H, W) -> unit embeddings (n, d)) to ONNX and check it
    against torch on a random batch. batch=None: dynamic batch axis. Raises if the lowest cosine
    between the two is under `min_cosine`."""
    torch = _torch()
    import onnx

    if opset < 17:
        raise ConfigError(f"opset must be >= 17, got {opset}")
    params = _transform_params(backend.preprocess)
    h, w = params["crop"]

    class ImageTower(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixels: Any) -> Any:
            return torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)

    tower = ImageTower(backend.model).eval()
    n = batch or 2
    gen = torch.Generator().manual_seed(seed)
    example = torch.randn(n, 3, h, w, generator=gen).to(backend.device)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Grad mode on (not inference_mode): it keeps nn.MultiheadAttention off its fused fast path,
    # whose op (_native_multi_head_attention) the TorchScript exporter cannot translate.
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            tower,
            (example,),
            str(path),
            input_names=["pixels"],
            output_names=["embedding"],
            opset_version=opset,
            dynamic_axes=None if batch else {"pixels": {0: "batch"}, "embedding": {0: "batch"}},
            dynamo=False,
        )
    proto = onnx.load(str(path))
    meta = {
        "fingerprint": backend.fingerprint,
        "model_name": backend.model_name,
        "dim": str(backend.dim),
        "transform": json.dumps(params),
    }
    for key, value in meta.items():
        prop = proto.metadata_props.add()
        prop.key, prop.value = _META_PREFIX + key, value
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))

    nb = batch or check_batch
    x = torch.randn(nb, 3, h, w, generator=gen)
    with torch.inference_mode():
        ref = tower(x.to(backend.device)).cpu().numpy()
    got = OnnxImageBackend(path).run_pixels(x.numpy())
    diff = float(np.abs(ref - got).max())
    cos = float(
        ((ref * got).sum(axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1) + 1e-12)).min()
    )
    report = OnnxExportReport(str(path), opset, batch, nb, diff, cos)
    if not math.isfinite(cos) or cos < min_cosine:
        raise EdgecacheError(f"ONNX image tower disagrees with torch: {report}")
    return report


def resize_crop_fn(params: dict[str, Any]) -> Callable[[Any], np.ndarray]:
    """The geometric half of open_clip's eval transform (Resize shortest side, CenterCrop) in PIL,
    as torchvision applies it to PIL images: RGB PIL image -> uint8 (H, W, 3).

    Split from `normalize_pixels` so that a batch job can ship uint8 crops between processes
    (a quarter of the float32 bytes) and normalise where the model runs."""
    from PIL import Image

    size = int(params["resize"])
    ch, cw = params["crop"]
    resample = {
        "bicubic": Image.Resampling.BICUBIC,
        "bilinear": Image.Resampling.BILINEAR,
        "nearest": Image.Resampling.NEAREST,
        "lanczos": Image.Resampling.LANCZOS,
    }[params.get("interpolation", "bicubic")]

    def apply(img: Any) -> np.ndarray:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        if short != size:
            new_long = int(size * long / short)
            nw, nh = (size, new_long) if w <= h else (new_long, size)
            img = img.resize((nw, nh), resample)
        w, h = img.size
        if w < cw or h < ch:  # torchvision pads with zeros; never the case after the resize
            raise InvalidImageError(f"image {w}x{h} smaller than the crop {cw}x{ch}")
        top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
        img = img.crop((left, top, left + cw, top + ch))
        return np.asarray(img.convert("RGB"), dtype=np.uint8)

    return apply


def normalize_pixels(crops: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    """uint8 crops (H, W, 3) or (n, H, W, 3) -> the model's float32 input, channels first
    (ToTensor + Normalize)."""
    mean = np.asarray(params["mean"], dtype=np.float32)[:, None, None]
    std = np.asarray(params["std"], dtype=np.float32)[:, None, None]
    a = np.asarray(crops, dtype=np.float32)
    a = np.moveaxis(a, -1, -3) / np.float32(255.0)
    return np.ascontiguousarray((a - mean) / std, dtype=np.float32)


def _numpy_preprocess(params: dict[str, Any]) -> Callable[[Any], np.ndarray]:
    """open_clip's eval transform (Resize shortest side, CenterCrop, ToTensor, Normalize) in PIL +
    numpy, as torchvision applies it to PIL images."""
    crop = resize_crop_fn(params)

    def apply(img: Any) -> np.ndarray:
        return normalize_pixels(crop(img), params)

    return apply


class OnnxImageBackend:
    """An exported image tower served by onnxruntime (no torch), as a TFUP FeatureBackend.

    preprocess: PIL image -> (3, H, W) array or tensor; None uses the transform recorded at
    export (numpy re-implementation). fingerprint: the torch backend's, from the model metadata."""

    name = "open_clip-onnx"
    modalities = frozenset({"image"})

    def __init__(
        self,
        path: str | os.PathLike | bytes,
        preprocess: Callable[[Any], Any] | None = None,
        threads: int | None = None,
        batch_size: int = 64,
    ) -> None:
        """`path`: the exported .onnx file, or its bytes (as shipped to batch workers)."""
        from .._native import onnxruntime as ort  # the onnxruntime-before-usearch import order

        model = bytes(path) if isinstance(path, (bytes, bytearray, memoryview)) else str(path)
        self.path = model if isinstance(model, str) else "<in-memory ONNX model>"
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.fingerprint = meta.get(_META_PREFIX + "fingerprint", "")
        self.model_name = meta.get(_META_PREFIX + "model_name", "")
        self.dim = int(meta.get(_META_PREFIX + "dim") or self.session.get_outputs()[0].shape[-1])
        if preprocess is None:
            raw = meta.get(_META_PREFIX + "transform")
            if raw is None:
                raise ConfigError(f"{self.path} records no transform; pass preprocess=")
            preprocess = _numpy_preprocess(json.loads(raw))
        self.preprocess = preprocess
        self.batch_size = batch_size
        shape = self.session.get_inputs()[0].shape
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None

    def run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(pixels, dtype=np.float32)
        (out,) = self.session.run(["embedding"], {"pixels": x})
        return np.asarray(out, dtype=np.float32)

    def embed_pil(self, images: Sequence[Any]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        bs = self.fixed_batch or self.batch_size
        out = []
        for i in range(0, len(images), bs):
            chunk = [np.asarray(self.preprocess(im), dtype=np.float32) for im in images[i : i + bs]]
            x = np.stack(chunk)
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:  # pad a fixed-batch model's last chunk
                x = np.concatenate([x, np.zeros((self.fixed_batch - n, *x.shape[1:]), np.float32)])
            out.append(self.run_pixels(x)[:n])
        return np.concatenate(out)

    def embed(self, items: list[Item]) -> np.ndarray:
        if any(isinstance(x, str) for x in items):
            from .serve import RequestError

            raise RequestError(415, "unsupported_media", "the ONNX open_clip backend embeds images only")
        return self.embed_pil([decode_image(b, i) for i, b in enumerate(items)])


# ---------------------------------------------------------------- serve factories
#
# `make_backend("module:factory", options)` (edgecache.adapters.serve) calls these with the
# deployment's `backend_options`, e.g. backend="edgecache.adapters.openclip:image_backend",
# backend_options={"model": "ViT-B-32", "pretrained": "/models/vit_b32.pt"}.


def tiny_backend(seed: int = 0, batch_size: int = 64, threads: int | None = None) -> OpenCLIPBackend:
    """`OpenCLIPBackend.tiny(seed)` for Serve: the test model (random weights)."""
    _set_torch_threads(threads)
    return OpenCLIPBackend.tiny(seed=seed, batch_size=batch_size)


def image_backend(
    model: str,
    pretrained: str | None = None,
    batch_size: int = 64,
    threads: int | None = None,
) -> OpenCLIPBackend:
    """`OpenCLIPBackend.from_pretrained(model, pretrained)` for Serve (images and texts);
    `pretrained`: a tag, a local checkpoint path, or None (random weights)."""
    _set_torch_threads(threads)
    return OpenCLIPBackend.from_pretrained(model, pretrained, batch_size=batch_size)


def onnx_backend(path: str, threads: int | None = None, batch_size: int = 64) -> OnnxImageBackend:
    """An exported image tower (`export_image_onnx`) for Serve: images only, no torch in the
    replica. The adapter must have been fitted with the torch backend the file was exported from."""
    if not Path(path).is_file():
        raise ConfigError(f"ONNX image tower not found: {path}")
    return OnnxImageBackend(path, threads=threads, batch_size=batch_size)


def _set_torch_threads(threads: int | None) -> None:
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    _torch().set_num_threads(threads)
