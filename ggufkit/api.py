"""The Python face: `ggufkit.load`, `ggufkit.convert`, `ggufkit.imatrix`, `ggufkit.fit`.

Each is the same pipeline the CLI command of that name runs (ggufkit.conversion, ggufkit.quant.imatrix_collect,
ggufkit.commands.fit.fit_report, ggufkit.runtime), without printing. Errors are ggufkit.errors.GgufkitError
subclasses with the one-line message the CLI shows.

    import ggufkit
    llm = ggufkit.load("HuggingFaceTB/SmolLM2-135M-Instruct", scheme="q4_k_m")   # converted once, cached
    print(llm.create_chat_completion([{"role": "user", "content": "Hi"}])["choices"][0]["message"]["content"])
"""
from __future__ import annotations

from pathlib import Path


def load(model: str | Path, scheme: str | None = None, n_ctx: int = 2048, threads: int | None = None,
         seed: int = 0, flash_attn: bool = False):
    """A ready llama_cpp.Llama for MODEL: a GGUF file, or a Hugging Face directory / hub id that is converted to
    SCHEME (default q4_k_m) once into ggufkit's cache (`ggufkit cache`) and reused afterwards.

    The CPU backend variant for this CPU is loaded first and, for a llama-cpp-python that offers ggml's AMX buffer
    type, the weights are kept off it (ggufkit.runtime.backends)."""
    from ggufkit import runtime

    path = runtime.resolve_model(str(model), scheme, quiet=True)
    return runtime.load(path, n_ctx=n_ctx, n_threads=threads, seed=seed, flash_attn=flash_attn)


def convert(src: str | Path, out: str | Path | None = None, scheme: str = "q4_k_m", imatrix=None,
            calibration: str | Path | None = None, calibration_chunks: int | None = None,
            calibration_ctx: int = 512, threads: int | None = None, progress: bool = False) -> Path:
    """Convert the Hugging Face checkpoint SRC (directory or hub id) to a GGUF file; returns its path.

    out: default `<model-name>-<SCHEME>.gguf` in the current directory. imatrix: an importance-matrix file
    (llama.cpp GGUF or legacy .dat) or an Imatrix; calibration: a text file to compute one from on the way
    (as `ggufkit convert --calibration`). The bytes equal llama-quantize's for the same inputs."""
    from ggufkit.conversion import default_output, load_imatrix, make_plan, run

    if calibration is not None:
        if imatrix is not None:
            from ggufkit.errors import InputError

            raise InputError("imatrix and calibration are alternatives: give one")
        imatrix = _imatrix(src, calibration, chunks=calibration_chunks, ctx=calibration_ctx, threads=threads,
                           progress=progress)
    plan = make_plan(str(src), scheme, imatrix)
    out = Path(out) if out is not None else default_output(plan)
    run(plan, out, threads=threads, imatrix=load_imatrix(imatrix), progress=progress)
    return out


def _imatrix(src, text, chunks=None, ctx=512, threads=None, progress=False, process_output=False):
    from ggufkit.quant.imatrix_collect import compute
    from ggufkit.sources.hf import resolve

    return compute(resolve(str(src)), Path(text), ctx=ctx, chunks=chunks, process_output=process_output,
                   threads=threads, progress=progress)


def imatrix(src: str | Path, text: str | Path, out: str | Path | None = None, chunks: int | None = None,
            ctx: int = 512, threads: int | None = None, process_output: bool = False):
    """The importance matrix of the Hugging Face model SRC over the calibration TEXT file (llama-imatrix's
    statistics). Returns a ggufkit.quant.imatrix.Imatrix; with OUT it is also saved there (.gguf: llama.cpp's
    GGUF imatrix format, .dat: the legacy one). Pass it to convert(imatrix=...)."""
    from ggufkit.errors import InputError

    if chunks is not None and chunks < 1:
        raise InputError(f"chunks={chunks} must be >= 1")
    im = _imatrix(src, text, chunks=chunks, ctx=ctx, threads=threads, process_output=process_output)
    if out is not None:
        im.save(Path(out))
    return im


def fit(model: str | Path, device: str, ctx: int = 4096, headroom: float = 0.15,
        reserve_mib: int | None = None) -> dict:
    """Which schemes of MODEL (a checkpoint or a GGUF file) fit DEVICE (a profile name, `ggufkit fit --help`)
    with a context of CTX tokens: the report `ggufkit fit --json` prints (budget, predicted RAM per scheme,
    the pick)."""
    from ggufkit.commands.fit import fit_report

    return fit_report(str(model), device, ctx, headroom, reserve_mib)


def quantize(src: str | Path, out: str | Path | None = None, scheme: str = "q4_k_m", imatrix=None,
             tensor_types=(), output_tensor_type: str | None = None, token_embedding_type: str | None = None,
             pure: bool = False, leave_output_tensor: bool = False, include_weights=(), exclude_weights=(),
             override_kv=(), allow_requantize: bool = False, keep_split: bool = False,
             split_max_size: int | str | None = None, split_max_tensors: int | None = None,
             threads: int | None = None, progress: bool = False) -> list[Path]:
    """Quantize the GGUF model SRC (a file, or the first part of a split set) to SCHEME, as llama-quantize does
    with the same options (byte for byte); returns the written file(s).

    tensor_types: "REGEX=TYPE" strings; override_kv: "KEY=TYPE:VALUE" strings; types by name ("q8_0");
    split_max_size: bytes or "2G". See `ggufkit quantize --help` for each option's meaning."""
    from ggufkit.errors import InputError
    from ggufkit.plan import overrides as ov
    from ggufkit.quantization import default_output, make_plan, run

    try:
        controls = ov.Controls(
            tensor_types=tuple(ov.parse_tensor_type(t) for t in tensor_types),
            output_tensor_type=ov.parse_ggml_type(output_tensor_type) if output_tensor_type else None,
            token_embedding_type=ov.parse_ggml_type(token_embedding_type) if token_embedding_type else None,
            pure=pure, leave_output_tensor=leave_output_tensor,
            kv_overrides=tuple(ov.parse_kv_override(o) for o in override_kv),
            include_weights=tuple(include_weights), exclude_weights=tuple(exclude_weights))
        plan = make_plan(str(src), scheme, controls, imatrix, keep_split=keep_split, split_max_size=split_max_size,
                         split_max_tensors=split_max_tensors)
    except ValueError as e:
        raise InputError(str(e)) from None
    out = Path(out) if out is not None else default_output(plan)
    return run(plan, out, threads=threads, allow_requantize=allow_requantize, progress=progress)
