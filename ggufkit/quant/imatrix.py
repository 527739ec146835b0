"""Importance matrices: computing them from a Hugging Face model, and llama.cpp's two file formats.

An importance matrix holds, for each weight matrix W (GGUF name, e.g. "blk.3.ffn_down.weight"), the sum over
calibration tokens of the squared input activation of every input column, and the number of tokens summed:

    sums:   (n_mat, n_cols) f32     Σ_t x_t[j]^2 for the matrix's input x (n_mat = 1 for a dense model)
    counts: (n_mat,)                tokens summed

llama.cpp computes it by running the GGUF model (llama-imatrix); we run the Hugging Face model with forward
hooks on its nn.Linear layers, which sees the same inputs (up to float rounding). The quantizer uses the mean,
sums / counts, as a per-column weight (`column_weights`), exactly as llama-quantize derives it from a file.

Formats (both read, both written):
- GGUF (llama.cpp's current one): general.type = "imatrix", imatrix.datasets (string array), imatrix.chunk_count,
  imatrix.chunk_size (u32), and per matrix two F32 tensors "<name>.in_sum2" (ne = [n_cols, n_mat]) and
  "<name>.counts" (ne = [1, n_mat]).
- legacy .dat: i32 n_entries, then per entry: i32 name_len, name bytes, i32 ncall, i32 nval, f32 values[nval]
  (values = sums / counts * ncall, ncall = calls of chunk_size tokens), then optionally i32 chunk_count,
  i32 dataset_len, dataset bytes.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ggufkit.errors import InputError

GGUF_MAGIC = b"GGUF"


@dataclass
class ImatrixEntry:
    sums: np.ndarray    # (n_mat, n_cols) f32
    counts: np.ndarray  # (n_mat,) f64, tokens per matrix


@dataclass
class Imatrix:
    entries: dict[str, ImatrixEntry] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # read from a .dat file (counts there are ncall, not tokens)

    def column_weights(self, name: str) -> np.ndarray | None:
        """The per-column importance the quantizer gets for tensor `name`, or None if the matrix has no entry:
        (n_mat * n_cols,) f32 = sums / counts per matrix; a matrix with count 0 gets ones (as llama-quantize)."""
        e = self.entries.get(name)
        if e is None:
            return None
        out = np.ones_like(e.sums, dtype=np.float32)
        for m in range(e.sums.shape[0]):
            if e.counts[m] > 0:
                out[m] = e.sums[m] / np.float32(e.counts[m])
            elif self.legacy:  # llama-quantize takes a legacy entry with ncall 0 as it stands
                out[m] = e.sums[m]
        return out.reshape(-1)

    # ---- files

    def save(self, path: Path) -> Path:
        """Write as GGUF, or as the legacy format if the name ends in .dat; atomically (temp file + rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            if path.suffix == ".dat":
                tmp.write_bytes(self._legacy_bytes())
            else:
                self._write_gguf(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def _write_gguf(self, path: Path) -> None:
        import gguf

        w = gguf.GGUFWriter(path, arch="imatrix")
        # GGUFWriter always writes general.architecture; llama.cpp's imatrix loader ignores it.
        w.add_type("imatrix")
        w.add_array("imatrix.datasets", list(self.datasets))
        w.add_uint32("imatrix.chunk_count", int(self.chunk_count))
        w.add_uint32("imatrix.chunk_size", int(self.chunk_size))
        for name in sorted(self.entries):
            e = self.entries[name]
            # numpy (n_mat, n_cols) is GGUF ne = [n_cols, n_mat]; counts (n_mat, 1) is ne = [1, n_mat]
            w.add_tensor(f"{name}.in_sum2", np.ascontiguousarray(e.sums, dtype=np.float32))
            w.add_tensor(f"{name}.counts", np.asarray(e.counts, dtype=np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    def _legacy_bytes(self) -> bytes:
        parts = [struct.pack("<i", len(self.entries))]
        size = self.chunk_size or 512
        for name in sorted(self.entries):
            e = self.entries[name]
            ncall = int((int(e.counts.max()) + size - 1) // size)
            vals = np.empty_like(e.sums, dtype=np.float32)
            for m in range(e.sums.shape[0]):
                c = np.float32(e.counts[m]) if e.counts[m] > 0 else np.float32(1)
                vals[m] = (e.sums[m] / c) * np.float32(ncall)
            raw = name.encode()
            parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, vals.size),
                      vals.astype("<f4").tobytes()]
        dataset = (self.datasets[0] if self.datasets else "").encode()
        parts += [struct.pack("<ii", int(self.chunk_count), len(dataset)), dataset]
        return b"".join(parts)


def load(path: Path) -> Imatrix:
    """Read an importance matrix in llama.cpp's GGUF or legacy .dat format (told apart by the magic)."""
    path = Path(path)
    try:
        head = path.open("rb").read(4)
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", path) from None
    return _load_gguf(path) if head == GGUF_MAGIC else _load_legacy(path)


def _load_gguf(path: Path) -> Imatrix:
    from ggufkit.sources.gguf import open_reader

    reader = open_reader(path)  # validated first: a corrupt file is a one-line InputError
    fields = reader.fields

    def scalar(key, default=0):
        f = fields.get(key)
        return int(f.parts[f.data[0]][0]) if f is not None else default

    kind = fields.get("general.type")
    if kind is None or bytes(kind.parts[kind.data[0]]).decode() != "imatrix":
        raise InputError("a GGUF file but not an importance matrix (general.type is not 'imatrix')", path)
    out = Imatrix(chunk_count=scalar("imatrix.chunk_count"), chunk_size=scalar("imatrix.chunk_size"))
    ds = fields.get("imatrix.datasets")
    if ds is not None:
        out.datasets = [bytes(ds.parts[i]).decode() for i in ds.data]
    sums, counts = {}, {}
    for t in reader.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = np.array(t.data, dtype=np.float32).reshape(-1, int(t.shape[0]))
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = np.array(t.data, dtype=np.float64).reshape(-1)
    for name in sorted(set(sums) | set(counts)):
        if name not in sums or name not in counts:
            raise InputError(f"{name}: has {'sums' if name in sums else 'counts'} but not both", path)
        if sums[name].shape[0] != counts[name].shape[0]:
            raise InputError(f"{name}: {sums[name].shape[0]} matrices of sums but {counts[name].shape[0]} counts",
                             path)
        out.entries[name] = ImatrixEntry(sums[name], np.rint(counts[name]))
    if not out.entries:
        raise InputError("importance matrix has no entries", path)
    return out


def _load_legacy(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise InputError(f"truncated legacy imatrix at byte {pos}", path)
        values = struct.unpack_from(fmt, data, pos)
        pos += size
        return values

    (n_entries,) = take("<i")
    if n_entries < 1 or n_entries > len(data) // 12:
        raise InputError(f"not an importance matrix (entry count {n_entries})", path)
    out = Imatrix(legacy=True)
    for _ in range(n_entries):
        (name_len,) = take("<i")
        if not 0 < name_len <= 4096:
            raise InputError(f"bad tensor name length {name_len} at byte {pos - 4}", path)
        name = data[pos: pos + name_len].decode(errors="replace")
        pos += name_len
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise InputError(f"{name}: {nval} values do not fit in the file", path)
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        # Legacy values are mean * ncall: keeping them as sums with count = ncall gives back the mean.
        out.entries[name] = ImatrixEntry(vals.reshape(1, -1), np.array([float(ncall)]))
    if pos + 4 <= len(data):
        (out.chunk_count,) = take("<i")
        if pos + 4 <= len(data):
            (n,) = take("<i")
            if 0 < n <= len(data) - pos:
                out.datasets = [data[pos: pos + n].decode(errors="replace")]
    return out
