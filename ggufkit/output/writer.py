"""Streaming GGUF output: gguf-py's GGUFWriter lays out the header, key-values and tensor infos; tensor data is
then written as it is produced, row block by row block, into a temp file next to OUT that is fsynced and
renamed over OUT only when complete. On any error (or Ctrl-C) the temp file is removed: nothing appears at OUT.

    with StreamingGGUF(out, arch="llama") as g:
        g.kv.add_name("SmolLM2")                       # any GGUFWriter.add_* on g.kv
        g.add_tensor_info("token_embd.weight", (49152, 576), GGMLQuantizationType.Q8_0)
        g.open()                                       # the temp file (optional: start() opens it too)
        g.start()                                      # header + KV + tensor infos
        g.begin_tensor("token_embd.weight"); g.write(block_bytes) ...; g.end_tensor()
        g.commit()                                     # fsync + rename

GGUFWriter.write_tensor_data needs a tensor's bytes in one piece; an f32 token embedding of a 1B model is
~1 GB, so the data part is written here in pieces instead, with the same alignment rule (each tensor's data
starts on a multiple of general.alignment, default 32, counted from the start of the data section, which is
itself aligned).
"""
from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path

import gguf
import numpy as np

from ggufkit.errors import OutputError

# Tests interrupt a conversion at an exact moment rather than after a guessed delay: with
# GGUFKIT_TEST_STOP_AT_BYTES=N in the environment, the process stops itself (SIGSTOP) once, as soon as its temp file
# holds N bytes, and the test signals it while it is stopped (tests/test_convert_inputs.py, test_crash_safety.py).
# Unset, this is one comparison per row block.
_STOP_AT = int(os.environ.get("GGUFKIT_TEST_STOP_AT_BYTES") or 0) or None


def tensor_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    """Bytes of a tensor of numpy `shape` stored as `qtype` (rows of cols // block_size blocks)."""
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    cols = shape[-1]
    if cols % block:
        raise ValueError(f"{qtype.name}: row length {cols} is not a multiple of the block size {block}")
    rows = 1
    for s in shape[:-1]:
        rows *= s
    return rows * (cols // block) * type_size


def _output_error(path: Path, e: OSError) -> OutputError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputError(f"cannot write the output: disk full or file size limit reached ({e.strerror})",
                           path)
    return OutputError(f"cannot write the output: {e.strerror or e}", path)


class StreamingGGUF:
    def __init__(self, out: Path, arch: str):
        self.out = Path(out)
        self.kv = gguf.GGUFWriter(path=None, arch=arch)
        self._tmp: Path | None = None
        self._fout = None
        self._order: list[tuple[str, int]] = []  # (name, nbytes) in file order
        self._next = 0  # index into _order of the tensor being / to be written
        self._written = 0  # bytes of the current tensor so far
        self._stopped = False  # GGUFKIT_TEST_STOP_AT_BYTES: stops once per file

    # ---- layout

    def add_tensor_info(self, name: str, shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
        """Declare a tensor (numpy shape, element counts); returns its byte size."""
        nbytes = tensor_nbytes(shape, qtype)
        # float32 dtype + raw_dtype: GGUFWriter then takes `shape` as element counts, whatever qtype is
        self.kv.add_tensor_info(name, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
        self._order.append((name, nbytes))
        return nbytes

    def open(self) -> None:
        """Create the temp file in OUT's directory (early, so an unwritable destination fails fast)."""
        if self._tmp is not None:
            return
        parent = self.out.parent
        if not parent.is_dir():
            raise OutputError("output directory does not exist", parent)
        # not tempfile.mkstemp: its files are mode 0600; a GGUF should get the usual umask-based mode
        tmp = parent / f".{self.out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        self._tmp = tmp  # before the file exists: a signal right after its creation still finds it in abort()
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except OSError as e:
            self._tmp = None
            raise _output_error(parent, e) from None

    def start(self) -> None:
        """Write header, key-values and tensor infos (after every add_tensor_info)."""
        self.open()
        try:
            self.kv.open_output_file(self._tmp)
            self._fout = self.kv.fout[0]
            self.kv.write_header_to_file()
            self.kv.write_kv_data_to_file()
            self.kv.write_ti_data_to_file()
        except OSError as e:
            raise _output_error(self.out, e) from None

    # ---- data

    def begin_tensor(self, name: str) -> None:
        expected, _ = self._order[self._next]
        if name != expected:
            raise RuntimeError(f"tensor {name} written out of order (expected {expected})")
        self._pad()
        self._written = 0

    def write(self, data: np.ndarray) -> None:
        """Append bytes of the current tensor (any contiguous array; its raw bytes are written)."""
        try:
            self._fout.write(memoryview(np.ascontiguousarray(data)).cast("B"))
        except OSError as e:
            raise _output_error(self.out, e) from None
        self._written += data.nbytes
        if _STOP_AT is not None and not self._stopped and self._fout.tell() >= _STOP_AT:
            import signal

            self._stopped = True
            self._fout.flush()
            os.kill(os.getpid(), signal.SIGSTOP)

    def end_tensor(self) -> None:
        name, nbytes = self._order[self._next]
        if self._written != nbytes:
            raise RuntimeError(f"tensor {name}: wrote {self._written} bytes, declared {nbytes}")
        self._next += 1

    def _pad(self) -> None:
        pos = self._fout.tell()
        pad = -pos % self.kv.data_alignment
        if pad:
            self._fout.write(b"\0" * pad)

    # ---- finish

    def commit(self) -> Path:
        """All tensors written: pad, flush, fsync, rename over OUT, fsync the directory."""
        if self._next != len(self._order):
            raise RuntimeError(f"only {self._next} of {len(self._order)} tensors written")
        try:
            self._pad()
            self._fout.flush()
            os.fsync(self._fout.fileno())
            self.kv.close()
            self._fout = None
            os.replace(self._tmp, self.out)
            self._tmp = None
            dir_fd = os.open(self.out.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise _output_error(self.out, e) from None
        return self.out

    def abort(self) -> None:
        """Drop the temp file (idempotent; errors while cleaning up are not the user's problem)."""
        try:
            self.kv.close()
        except OSError:
            pass
        self._fout = None
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except OSError:
                pass
            self._tmp = None

    def __enter__(self) -> StreamingGGUF:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()  # after commit() there is nothing left to remove
