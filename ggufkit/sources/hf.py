"""Open a Hugging Face checkpoint (a local directory or a hub id) and read its safetensors tensors lazily.

    ckpt = open_checkpoint("./SmolLM2-135M-Instruct")     # or "HuggingFaceTB/SmolLM2-135M-Instruct"
    ckpt.config                                           # config.json as a dict
    t = ckpt.tensors["model.layers.0.self_attn.q_proj.weight"]
    t.read_rows(0, 64)                                    # (64, cols) f32, read from disk on demand

Every header is validated before any allocation is sized from it: header length, JSON, dtype names, shapes,
byte ranges (inside the file, matching shape x dtype size, not overlapping), shard names from the index.

Why not safetensors.safe_open: it memory-maps the whole shard, and every page touched stays in our RSS until
the map is closed, so converting a 2 GB shard tensor by tensor ends with ~2 GB resident. Reading byte ranges
with os.pread keeps only the current row block in memory, and lets us give one-line errors naming the file.
"""
from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ggufkit.errors import InputError

_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format itself caps the JSON header at 100 MB
# safetensors dtype name -> bytes per element; we convert the float ones to f32
SUPPORTED_DTYPES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}
KNOWN_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8,
                "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1,
                "F6_E2M3": 1, "F6_E3M2": 1, "C64": 8}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"


def _to_f32(raw: bytes | bytearray | memoryview, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian bytes of `dtype` -> f32 array of `shape`."""
    if dtype == "BF16":  # bf16 is the top half of an f32: widen the bits, no rounding involved
        # one pass, one output array (astype then << made two of each: 14.8 -> 8.5 ms per 16 MiB of f32)
        return np.left_shift(np.frombuffer(raw, dtype="<u2"), 16, dtype=np.uint32).view(np.float32).reshape(shape)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32).reshape(shape)
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").reshape(shape).copy()
    return np.frombuffer(raw, dtype="<f8").astype(np.float32).reshape(shape)  # F64


@dataclass(frozen=True)
class TensorRef:
    """One tensor in one shard: where its bytes are and how to read them. Nothing is read until asked."""
    name: str
    file: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int  # absolute byte offset of the data in `file`
    nbytes: int

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1  # a 1-D tensor is one row (see cols)

    @property
    def cols(self) -> int:
        return math.prod(self.shape[1:]) if len(self.shape) > 1 else (self.shape[0] if self.shape else 1)

    def check_dtype(self) -> None:
        if self.dtype not in SUPPORTED_DTYPES:
            raise InputError(f"tensor {self.name} has dtype {self.dtype}, which is not supported "
                             f"(supported: {', '.join(SUPPORTED_DTYPES)})", self.file)

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) as f32: (stop-start, cols) for matrices; a 1-D tensor is one row of n."""
        self.check_dtype()
        item = SUPPORTED_DTYPES[self.dtype]
        row_bytes = self.cols * item
        want = (stop - start) * row_bytes
        buf = bytearray(want)
        view = memoryview(buf)
        fd = os.open(self.file, os.O_RDONLY)
        try:
            done = 0
            while done < want:
                n = os.preadv(fd, [view[done:]], self.offset + start * row_bytes + done)
                if n <= 0:
                    raise InputError(f"file is truncated: tensor {self.name} ends at byte "
                                     f"{self.offset + self.nbytes}, the file has {os.fstat(fd).st_size}",
                                     self.file)
                done += n
        except OSError as e:
            raise InputError(f"cannot read tensor {self.name}: {e.strerror or e}", self.file) from None
        finally:
            os.close(fd)
        return _to_f32(buf, self.dtype, (stop - start, self.cols))

    def read(self) -> np.ndarray:
        """The whole tensor as f32 in its own shape (for small tensors)."""
        return self.read_rows(0, self.rows).reshape(self.shape)


def read_safetensors_header(path: Path) -> dict[str, TensorRef]:
    """Parse and validate one .safetensors file's header. -> {tensor name: TensorRef} in header order."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise InputError(f"not a safetensors file: {size} bytes, too short for a header", path)
            n = int.from_bytes(head, "little")
            if n > min(size - 8, _MAX_HEADER):
                raise InputError(f"corrupt safetensors header: header length {n} exceeds the file size {size}"
                                 if n > size - 8 else f"corrupt safetensors header: header length {n} is absurd",
                                 path)
            raw = f.read(n)
    except FileNotFoundError:
        raise InputError("file is missing", path) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", path) from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting
        raise InputError(f"corrupt safetensors header: not valid JSON ({e})", path) from None
    if not isinstance(header, dict):
        raise InputError("corrupt safetensors header: not a JSON object", path)
    data_start = 8 + n
    data_size = size - data_start
    refs: dict[str, TensorRef] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str)
                and isinstance(info.get("shape"), list) and isinstance(info.get("data_offsets"), list)
                and len(info["data_offsets"]) == 2
                and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in info["shape"])
                and all(isinstance(o, int) and not isinstance(o, bool) for o in info["data_offsets"])):
            raise InputError(f"corrupt safetensors header: bad entry for tensor {name}", path)
        dtype, shape = info["dtype"], tuple(info["shape"])
        if dtype not in KNOWN_DTYPES:
            raise InputError(f"corrupt safetensors header: tensor {name} has unknown dtype {dtype!r}", path)
        begin, end = info["data_offsets"]
        expected = math.prod(shape) * KNOWN_DTYPES[dtype]
        if not 0 <= begin <= end:
            raise InputError(f"corrupt safetensors header: tensor {name} has offsets [{begin}, {end}]", path)
        if end - begin != expected:
            raise InputError(f"corrupt safetensors header: tensor {name} holds {end - begin} bytes, its shape "
                             f"{list(shape)} x {dtype} needs {expected}", path)
        if end > data_size:
            raise InputError(f"file is truncated: tensor {name} ends at byte {data_start + end}, "
                             f"the file has {size}", path)
        spans.append((begin, end, name))
        refs[name] = TensorRef(name, path, dtype, shape, data_start + begin, end - begin)
    spans.sort()
    for (_, e0, n0), (b1, _, n1) in itertools.pairwise(spans):
        if b1 < e0:
            raise InputError(f"corrupt safetensors header: tensors {n0} and {n1} overlap", path)
    return refs


class Checkpoint:
    """A local HF checkpoint directory: config.json plus one or more safetensors shards."""

    def __init__(self, directory: Path, name: str | None = None):
        self.dir = Path(directory)
        self.name = name or self.dir.name  # the model's name (a hub snapshot dir is named by its commit)
        cfg_path = self.dir / "config.json"
        if not cfg_path.is_file():
            raise InputError("missing config.json (not a Hugging Face model directory?)", cfg_path)
        try:
            self.config: dict = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting
            raise InputError(f"not valid JSON ({e})", cfg_path) from None
        if not isinstance(self.config, dict):
            raise InputError("not a JSON object", cfg_path)
        self.config_path = cfg_path
        self.tensors: dict[str, TensorRef] = {}
        self.weights_file = self.dir / SINGLE_NAME  # the index when sharded; named in errors about the set
        for shard, expected in self._shards().items():
            refs = read_safetensors_header(shard)
            for tensor in expected:
                if tensor not in refs:
                    raise InputError(f"tensor {tensor} is listed in {INDEX_NAME} but missing from the file", shard)
            for tensor, ref in refs.items():
                if tensor in self.tensors:
                    raise InputError(f"tensor {tensor} also appears in {self.tensors[tensor].file.name}", shard)
                self.tensors[tensor] = ref
        # a pre-quantized checkpoint (bitsandbytes, FP8, GPTQ, ...): one QuantRef per quantized weight
        from ggufkit.sources import prequant

        self.tensors = prequant.wrap(self.tensors, self.config, cfg_path)

    def _shards(self) -> dict[Path, list[str]]:
        """{shard path: tensor names the index promises in it} (one file, or the shards of the index)."""
        index = self.dir / INDEX_NAME
        if index.is_file():
            self.weights_file = index
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
                if not isinstance(weight_map, dict):
                    raise TypeError
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, KeyError, TypeError):
                raise InputError("not a valid safetensors index (no weight_map object)", index) from None
            shards: dict[Path, list[str]] = {}
            for tensor, fname in weight_map.items():
                if not isinstance(fname, str) or not re.fullmatch(r"[\w.\-]+\.safetensors", fname):
                    raise InputError(f"tensor {tensor} maps to a bad shard name {fname!r}", index)
                shards.setdefault(self.dir / fname, []).append(tensor)
            for shard in shards:
                if not shard.is_file():
                    raise InputError(f"shard listed in {INDEX_NAME} is missing", shard)
            return shards
        single = self.dir / SINGLE_NAME
        if single.is_file():
            return {single: []}
        others = sorted(self.dir.glob("*.safetensors"))
        if len(others) == 1:
            self.weights_file = others[0]
            return {others[0]: []}
        if others:
            raise InputError(f"{len(others)} safetensors files but no {INDEX_NAME}", self.dir)
        raise InputError(f"no {SINGLE_NAME} (only safetensors checkpoints are supported)", self.dir)


# owner/name; neither part starts with "." or "-" (so ./model, ../model and .cache/x are paths, not ids)
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.\-]*/[A-Za-z0-9_][\w.\-]*")


def resolve(src: str | os.PathLike) -> Path:
    """A local directory as is; otherwise a hub id (`owner/name`) resolved to its snapshot directory through
    huggingface-hub, which honours its cache and HF_HUB_OFFLINE (offline: only what is cached)."""
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise InputError("not a directory (expected a Hugging Face model directory)", path)
        return path
    text = str(src)
    if not _HUB_ID.fullmatch(text):
        raise InputError("no such directory", path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    # huggingface-hub reads these variables once, at import; read them again so a change at run time counts
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    try:
        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "tokenizer.model",
                                                            "*.jinja", "*.txt"],
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None,
                                      local_files_only=offline))
    except LocalEntryNotFoundError:
        raise InputError("no such directory, and not in the Hugging Face cache (offline or unreachable hub)",
                         text) from None
    except (HfHubHTTPError, OSError, ValueError) as e:
        raise InputError(f"cannot download from the Hugging Face hub: {str(e).splitlines()[0]}", text) from None


def open_checkpoint(src: str | os.PathLike) -> Checkpoint:
    path = resolve(src)
    local = Path(src).expanduser()
    return Checkpoint(path, name=local.name if local.exists() else str(src).rsplit("/", 1)[-1])
