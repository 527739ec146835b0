"""`ggufkit convert`: the CLI over ggufkit.conversion."""
from __future__ import annotations

import atexit
import ctypes
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import click

from ggufkit.commands._controls import control_options, pop_controls, split_options
from ggufkit.conversion import check_destination, default_output, load_imatrix, make_plan, print_plan, run
from ggufkit.plan.overrides import Controls


def _reuse_row_buffers() -> None:
    """glibc maps every 16 MiB row block afresh (and the kernel zeroes its pages: ~2.5 s of system time on a 1B
    conversion, 15% of its CPU time); with these thresholds freed blocks stay in the heap and are reused (~10 MiB
    more peak RSS). The process is this command's; elsewhere (no glibc) nothing changes."""
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 64 << 20)   # M_MMAP_THRESHOLD: blocks below 64 MiB come from the heap
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD: keep up to 256 MiB of free heap mapped
    except (AttributeError, OSError):
        pass


def _scheme(ctx, param, value: str) -> str:
    from ggufkit.conversion import SOURCE_SCHEME
    from ggufkit.plan import schemes

    if value.strip().lower() == SOURCE_SCHEME:
        return SOURCE_SCHEME
    try:
        return schemes.get_scheme(value).name
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


@click.command("convert")
@click.argument("src")
@click.option("-o", "--output", "out", type=click.Path(dir_okay=False, path_type=Path),
              help="Output file [default: <model-name>-<SCHEME>.gguf in the current directory].")
@click.option("--scheme", default="q4_k_m", show_default=True, callback=_scheme,
              help="Quantization scheme (llama-quantize's names, case-insensitive): f32, f16, bf16, q8_0, "
                   "q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, q3_k_m, q3_k_l, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k, "
                   "iq4_nl, iq4_xs; aliases q3_k, q4_k, q5_k = the _m schemes; `source` keeps a "
                   "pre-quantized checkpoint's grid where a GGUF type holds it exactly (GPTQ/AWQ 4-bit -> "
                   "Q4_0/Q4_1, MXFP4), the rest as q8_0.")
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Importance matrix (llama.cpp GGUF or .dat format) to weight the quantization.")
@click.option("--calibration", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Calibration text: compute an importance matrix from it on the way (runs the HF model on the "
                   "CPU; needs torch) and quantize with it.")
@click.option("--calibration-chunks", type=click.IntRange(min=1), default=32, show_default=True,
              help="With --calibration: chunks of --calibration-ctx tokens to run.")
@click.option("--calibration-ctx", type=click.IntRange(min=16), default=512, show_default=True,
              help="With --calibration: tokens per chunk.")
@control_options
@split_options
@click.option("--threads", type=click.IntRange(min=1), help="Quantization threads [default: all cores].")
@click.option("--dry-run", is_flag=True, help="Print the plan (tensor, shape, type, bytes; total size and bits "
                                              "per weight) and write nothing.")
@click.option("--force", is_flag=True, help="Replace OUT even if it is not a GGUF file (a GGUF file is always "
                                            "replaced, as llama.cpp's tools do).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan or the result as JSON.")
@click.option("--target-size", default=None, help="Size budget for the whole file (e.g. 700MB, 1.2GiB): each "
              "tensor's standard type is chosen to minimise the predicted error (ggufkit.plan.budget).")
@click.option("--target-bpw", type=float, default=None, help="Budget in bits per weight (e.g. 4.5).")
@click.option("--device", default=None, help="Budget: what fits a device profile (see `ggufkit fit`) at --ctx.")
@click.option("--ctx", "budget_ctx", type=click.IntRange(min=16), default=None,
              help="With --device: the context the budget leaves room for [4096].")
@click.option("--optimize", type=click.Choice(["search", "feedback", "gptq"]), is_flag=False, flag_value="search",
              default=None,
              help="`--optimize` (= search): search K-quant scales against the importance-weighted error (never "
              "worse per block than llama.cpp's). `--optimize feedback`: GPTQ-style error feedback across columns "
              "into K-quants and Q4_0..Q8_0 from the layer-by-layer input covariance of --calibration (needs it; "
              "per tensor, used only where it lowers the error on the held-out half of the chunks); "
              "`--optimize gptq`: both (the search inside each block of columns). Recorded in ggufkit.optimize.*. "
              "Changes the bytes; the types stay standard.")
def command(src, out, scheme, imatrix, calibration, calibration_chunks, calibration_ctx, threads, dry_run, force,
            quiet, as_json, split_max_size, split_max_tensors, target_size, target_bpw, device, budget_ctx,
            optimize, **kwargs):
    """Convert a Hugging Face checkpoint (safetensors) to a GGUF file in one streaming pass.

    SRC is a local model directory (config.json + model.safetensors or shards with
    model.safetensors.index.json) or a Hugging Face hub id (HF_HUB_OFFLINE and the cache are honoured).
    Every tensor gets the type llama-quantize picks for the scheme, with the same bytes.

    \b
    Example:
      ggufkit convert ./SmolLM2-135M-Instruct --scheme q4_k_m -o smollm2-q4_k_m.gguf
      ggufkit convert HuggingFaceTB/SmolLM2-135M-Instruct --scheme q8_0 --dry-run
      ggufkit convert ./SmolLM2-135M-Instruct --scheme q4_k_m --calibration hamlet.txt
      ggufkit convert ./model --scheme q4_k_m --tensor-type "ffn_down=q6_k" --split-max-size 2G
      ggufkit convert ./SmolLM2-135M-Instruct --calibration hamlet.txt --target-size 90MB --dry-run
      ggufkit convert ./SmolLM2-135M-Instruct --calibration hamlet.txt --target-size 90MB --optimize gptq

    With --target-size, --target-bpw or --device (+ --ctx) the types are chosen per tensor under that budget
    (standard types only; the file records the budget in ggufkit.optimize.* keys); without them the bytes are
    llama-quantize's.
    """
    controls = pop_controls(kwargs)
    if split_max_size and split_max_tensors:
        raise click.UsageError("--split-max-size and --split-max-tensors are alternatives: give one")
    split = {"max_size": split_max_size} if split_max_size else \
        {"max_tensors": split_max_tensors} if split_max_tensors else None
    from ggufkit.plan import budget as budgets

    budget = budgets.parse_budget(target_size, target_bpw, device, budget_ctx)
    if budget is not None and (controls != Controls() or split):
        raise click.UsageError("a size budget chooses every tensor's type for one file: give it, or the type "
                               "controls / a split, not both")
    if out is not None and not dry_run:
        check_destination(out, force)  # before any long work
    stats = None
    feedback = optimize in ("feedback", "gptq")
    if feedback and calibration is None:
        raise click.UsageError(f"--optimize {optimize} needs --calibration TEXT (the input statistics come from it)")
    if calibration is not None:
        if imatrix is not None:
            raise click.UsageError("--imatrix and --calibration are alternatives: give one")
        if feedback and (not dry_run or budget is not None):  # layer by layer, bounded memory
            from ggufkit.quant.holdout import calibrate_halves
            from ggufkit.sources.hf import resolve

            stats_dir = None
            if not dry_run:
                stats_dir = Path(tempfile.mkdtemp(prefix="ggufkit-calibration-"))  # removed when the command ends
                atexit.register(shutil.rmtree, stats_dir, True)
            # two halves of the chunks: error feedback is fitted on one and checked on the other, per tensor
            imatrix, stats = calibrate_halves(resolve(src), calibration, ctx=calibration_ctx,
                                              chunks=calibration_chunks, threads=threads,
                                              progress=not quiet and sys.stderr.isatty(), stats_dir=stats_dir)
        elif not dry_run or budget is not None:  # a budget's error estimates need the importance matrix
            from ggufkit.quant.imatrix_collect import compute
            from ggufkit.sources.hf import resolve

            imatrix = compute(resolve(src), calibration, ctx=calibration_ctx, chunks=calibration_chunks,
                              threads=threads, progress=not quiet and sys.stderr.isatty())
        else:
            imatrix = calibration  # the plan only needs to know an imatrix will be used
    plan = make_plan(src, scheme, imatrix, controls if controls != Controls() else None, split)
    out = out if out is not None else default_output(plan)
    if optimize == "search" or (feedback and stats is None):  # a dry run plans the same types either way
        from ggufkit.quant import rounding

        rounding.enable(plan)
    elif feedback:
        from ggufkit.quant import gptq

        gptq.enable(plan, stats, search=optimize == "gptq", threads=threads)
    if budget is not None:
        guard = {}
        sensitivity_fits = True
        if calibration is not None:
            from ggufkit.plan.sensitivity import memory_needed
            from ggufkit.runtime import rpc

            need = memory_needed(plan, calibration_ctx, budgets.SENSITIVITY_CHUNKS)   # one f32 layer at a time
            free = rpc.local_free_bytes()
            sensitivity_fits = need <= free
            if not sensitivity_fits:  # not even one layer at a time fits: the modelled errors, no guard
                click.echo(f"note: the measured sensitivities need ~{need / 2**30:.1f} GiB (one float32 layer at a "
                           f"time), {free / 2**30:.1f} GiB available: the budget uses the stream error model",
                           err=True)
        if calibration is not None and sensitivity_fits:
            # measured sensitivities, and the guard on a chunk the imatrix did not see
            from ggufkit.sources.hf import resolve

            allocation, guard = budgets.allocate_calibrated(
                plan, budget, load_imatrix(imatrix), resolve(src), calibration, calibration_ctx,
                held_out=calibration_chunks, threads=threads, progress=not quiet and sys.stderr.isatty())
        else:
            allocation = budgets.allocate_plan(plan, budget, load_imatrix(imatrix), threads=threads,
                                               progress=not quiet and sys.stderr.isatty())
        if dry_run:
            if as_json:
                click.echo(json.dumps({**plan.summary(), **allocation.summary(), "output": str(out),
                                       "guard": guard, "tensors": allocation.rows}, indent=1))
            else:
                click.echo(budgets.format_allocation(allocation))
                if guard:
                    scheme_kl = "does not fit" if guard["kl_scheme"] is None else f"{guard['kl_scheme']:.5f}"
                    click.echo(f"guard (held-out KL): this mix {guard['kl_budget']:.5f}, the scheme's own types "
                               f"{scheme_kl}: keeps {'the scheme' if guard['mix'] == 'scheme' else 'this mix'}")
            return
    if dry_run:
        if as_json:
            click.echo(json.dumps({**plan.summary(), "output": str(out), "tensors": plan.rows()}, indent=1))
        else:
            print_plan(plan)
        return
    _reuse_row_buffers()
    start = time.perf_counter()
    written = run(plan, out, threads=threads, imatrix=load_imatrix(imatrix),
                  progress=not quiet and sys.stderr.isatty(), force=force)
    seconds = time.perf_counter() - start
    file_bytes = Path(written).stat().st_size
    if as_json:
        click.echo(json.dumps({**plan.summary(), "output": str(written), "file_bytes": file_bytes,
                               "seconds": round(seconds, 3)}))
    elif not quiet:
        s = plan.summary()
        click.echo(f"{written}: {s['scheme']}, {s['tensors']} tensors, {file_bytes / 2**20:.1f} MiB "
                   f"(tensor data {s['bytes'] / 2**20:.1f} MiB), {s['bits_per_weight']:.2f} bits per weight, "
                   f"{seconds:.1f} s")
