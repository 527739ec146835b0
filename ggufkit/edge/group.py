"""A group of boards running one model over llama.cpp's RPC backend: the layer split and the RAM per board.

    plan = plan_group(shape, [get_device("rpi5-8gb"), get_device("rpi4-4gb")], n_ctx=4096)
    plan.counts            # repeating layers per board: the head (first device) first, then each worker
    plan.members[1].total  # predicted peak RSS of the worker's rpc-server, bytes

The first device is the head: it runs `ggufkit serve --rpc ...`, keeps the token embeddings (llama.cpp never
offloads the input layer) and its own first layers, and samples. Every other device runs `ggufkit worker`
(llama.cpp's rpc-server); the last one also holds the output head (llama.cpp offloads it with the last layer,
see ggufkit.runtime.rpc). Per board, with the parts of ggufkit.edge.memory:

  head     runtime overhead + token embeddings + its layers' weights (+ repacked copies on its CPU) + KV cache
           of its layers + compute buffers; plus, reclaimable, the file pages of every offloaded tensor (the head
           reads them from its mmap to send them to the workers).
  worker   rpc-server's own RSS (WORKER_BASE) + its layers' weights (anonymous buffers: the data arrives over
           the socket; no repacking on an RPC device) + KV cache of its layers + its share of the compute
           buffers; the last worker also the output head.

The split: layers go to the boards in proportion to what each budget has left after its fixed part (head:
runtime + embeddings; last worker: the output head), so every board keeps about the same fraction free.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ggufkit.edge import memory
from ggufkit.edge.devices import Device

__all__ = ["WORKER_BASE", "GroupPlan", "Member", "layer_weights", "plan_group"]

MIB = memory.MIB
# VmHWM of an idle ggml-rpc-server (llama-cpp-python 0.3.36, x86-64): its binary, libggml, the CPU variant and
# libstdc++ pages, measured 7.1-7.4 MiB before any buffer is allocated (BENCHMARKS.md, "RPC").
WORKER_BASE = int(7.3 * MIB)
_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass
class Member:
    device: Device
    role: str                 # "head" or "worker"
    layers: int               # repeating layers on this board
    output: bool              # holds the output head
    weights: int
    repacked: int
    kv_cache: int
    compute: int
    overhead: int
    reclaimable: int          # file pages the kernel may drop (head only)
    budget: int               # bytes of RAM the board offers the model process
    first_layer: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.repacked + self.kv_cache + self.compute + self.overhead + self.reclaimable

    @property
    def needed(self) -> int:
        return self.total - self.reclaimable - self.repacked

    @property
    def fits(self) -> bool:
        return self.needed <= self.budget

    def as_dict(self) -> dict:
        parts = ("weights", "repacked", "kv_cache", "compute", "overhead", "reclaimable", "total", "needed",
                 "budget")
        return {"device": self.device.name, "role": self.role, "layers": self.layers,
                "first_layer": self.first_layer, "output_head": self.output,
                **{f"{p}_mib": round(getattr(self, p) / MIB, 1) for p in parts}, "fits": self.fits}


@dataclass
class GroupPlan:
    n_ctx: int
    members: list[Member] = field(default_factory=list)

    @property
    def counts(self) -> list[int]:
        return [m.layers for m in self.members]

    @property
    def fits(self) -> bool:
        return all(m.fits for m in self.members)

    @property
    def split(self) -> str:
        """The --split value that reproduces this plan."""
        return ",".join(str(c) for c in self.counts)


def layer_weights(shape: memory.ModelShape):
    """(bytes per repeating layer, input bytes (token_embd), output bytes (output norm + output or the tied
    embedding llama.cpp duplicates for it), {layer: repackable bytes on any CPU: the layer's tensor list})."""
    per_layer = [0] * shape.n_layer
    tensors_of = [[] for _ in range(shape.n_layer)]
    embd = output = 0
    has_output = any(n == "output.weight" for n, _, _ in shape.tensors)
    for name, s, t in shape.tensors:
        nbytes = memory.tensor_bytes(t, s)
        m = _LAYER.match(name)
        if m:
            per_layer[int(m.group(1))] += nbytes
            tensors_of[int(m.group(1))].append((name, s, t))
        elif name == "token_embd.weight":
            embd = nbytes
            if not has_output:
                output += nbytes  # tied: llama.cpp loads token_embd a second time as the output
        else:
            output += nbytes
    return per_layer, embd, output, tensors_of


def _kv_per_layer(shape: memory.ModelShape, n_ctx: int) -> int:
    return memory.kv_cells(n_ctx) * (shape.kv_width // max(shape.n_layer, 1)) * 2


def _compute(shape: memory.ModelShape, n_ctx: int, n_ubatch: int, logits: bool) -> int:
    """The single-device compute estimate (memory.estimate), which every board with layers pays: each runs the
    attention of its own layers on a full batch. Only the board with the output head holds the logits."""
    est = memory.estimate(shape, n_ctx, frozenset(), n_ubatch=n_ubatch)
    return est.compute - (0 if logits else shape.n_vocab * 4)


def plan_group(shape: memory.ModelShape, devices: list[Device], n_ctx: int, headroom: float = 0.15,
               reserves: list[int | None] | None = None, counts: list[int] | None = None,
               n_ubatch: int = memory.DEFAULT_UBATCH) -> GroupPlan:
    """Split the model over devices (the first is the head) and predict each one's RAM; counts overrides the
    split (layers per device)."""
    if len(devices) < 2:
        raise ValueError("a group needs at least two devices (the head and one worker)")
    reserves = reserves or [None] * len(devices)
    per_layer, embd, output, tensors_of = layer_weights(shape)
    kv_layer = _kv_per_layer(shape, n_ctx)
    head_overhead = memory.RUNTIME_BASE + shape.n_vocab * memory.VOCAB_BYTES_PER_TOKEN
    budgets = [int((d.ram_mib - (d.os_reserve_mib if r is None else r)) * (1 - headroom) * MIB)
               for d, r in zip(devices, reserves)]
    fixed = [head_overhead + embd] + [WORKER_BASE] * (len(devices) - 1)
    fixed[-1] += output
    if counts is None:
        from ggufkit.runtime.rpc import layer_counts

        room = [max(b - f, 1) for b, f in zip(budgets, fixed)]
        counts = layer_counts(shape.n_layer, room)
    if len(counts) != len(devices) or sum(counts) != shape.n_layer:
        raise ValueError(f"split {counts} does not give {shape.n_layer} layers to {len(devices)} devices")
    plan = GroupPlan(n_ctx)
    start = 0
    offloaded = 0
    for i, (dev, n) in enumerate(zip(devices, counts)):
        layers = range(start, start + n)
        weights = sum(per_layer[j] for j in layers)
        is_head, is_last = i == 0, i == len(devices) - 1
        repacked = 0
        if is_head:  # only the head's CPU buffers are repacked; an RPC device takes the plain buffer type
            sub = memory.ModelShape(shape.name, n, shape.n_head, shape.n_embd, shape.n_vocab, 0,
                                    tuple(t for j in layers for t in tensors_of[j]))
            repacked = memory.estimate(sub, n_ctx, dev.features).repacked
            weights += embd
        else:
            offloaded += weights + (output if is_last else 0)
        if is_last:
            weights += output
        compute = _compute(shape, n_ctx, n_ubatch, logits=is_last) if n or is_last else 0
        plan.members.append(Member(dev, "head" if is_head else "worker", n, is_last, weights, repacked,
                                   kv_layer * n, compute, head_overhead if is_head else WORKER_BASE, 0,
                                   budgets[i], first_layer=start))
        start += n
    plan.members[0].reclaimable = offloaded
    return plan


def group_report(src: str, device_names: list[str], n_ctx: int, headroom: float = 0.15,
                 reserve_mib: int | None = None, split: list[int] | None = None) -> dict:
    """`ggufkit fit SRC --devices a,b,c`: for every scheme the split and the RAM per board, and the pick (the
    best quality whose plan fits every board; ggufkit fit's rule). For a GGUF file its own types come first."""
    from pathlib import Path

    from ggufkit.commands.fit import QUALITY_PPL, pick_best  # the quality table and the pick rule of `fit`
    from ggufkit.edge.devices import get_device
    from ggufkit.errors import InputError
    from ggufkit.plan.schemes import SCHEMES

    try:
        devices = [get_device(n) for n in device_names]
    except ValueError as e:
        raise InputError(str(e), "--devices") from None
    if len(devices) < 2:
        raise InputError("name at least two boards: the head first, then the workers", "--devices")
    path = Path(src).expanduser()
    if path.is_file():
        shape, info = memory.shape_from_gguf(path), memory.model_info_from_gguf(path)
    else:
        try:
            shape, info = memory.shape_from_checkpoint(src)
        except ValueError as e:
            raise InputError(str(e), src) from None
    if split is not None and (len(split) != len(devices) or sum(split) != shape.n_layer):
        raise InputError(f"{len(split)} counts summing to {sum(split)}; need {len(devices)} summing to "
                         f"{shape.n_layer} layers", "--split")
    reserves = [reserve_mib] * len(devices)

    def row(name, typed, ppl):
        plan = plan_group(typed, devices, n_ctx, headroom, reserves, counts=split)
        worst = max(m.needed / m.budget for m in plan.members)
        return {"scheme": name, "file_mib": round(typed.weight_bytes / MIB, 1), "ppl_increase": ppl,
                "split": plan.split, "fits": plan.fits, "needed_mib": round(worst * 1000, 1),
                "boards": [m.as_dict() for m in plan.members]}

    file_row = row("(this file)", shape, None) if path.is_file() else None
    rows = []
    for name in SCHEMES:
        try:
            typed = memory.with_scheme(shape, info, name)
        except ValueError:  # the model's rows fit no block of the scheme (Q1_0 on rows of 576): not a candidate
            continue
        rows.append(row(name, typed, QUALITY_PPL.get(name)))
    pick = pick_best(rows)  # near-equal quality: the one whose fullest board is least full ("needed_mib")
    for r in rows + ([file_row] if file_row else []):
        r["fullest_board_fraction"] = round(r.pop("needed_mib") / 1000, 3)
    return {"model": shape.name, "n_layer": shape.n_layer, "n_ctx": n_ctx, "headroom": headroom,
            "devices": [d.name for d in devices], "file": file_row, "schemes": rows,
            "pick": pick["scheme"] if pick else None}


def format_report(report: dict) -> list[str]:
    lines = [(f"group: {' + '.join(report['devices'])} (head first), model {report['model']} "
              f"({report['n_layer']} layers), context {report['n_ctx']} tokens, {report['headroom']:.0%} headroom"),
             f"{'scheme':<12} {'file MiB':>9} {'split':>14} {'fullest':>8} {'fits':>5}"]
    rows = ([report["file"]] if report["file"] else []) + report["schemes"]
    for r in rows:
        mark = "  <- pick" if r["scheme"] == report["pick"] else ""
        lines.append(f"{r['scheme']:<12} {r['file_mib']:>9.1f} {r['split']:>14} "
                     f"{r['fullest_board_fraction']:>8.0%} {'yes' if r['fits'] else 'no':>5}{mark}")
    chosen = next((r for r in rows if r["scheme"] == report["pick"]), None)
    if chosen is None:
        lines.append("no scheme fits the group: a smaller context (--ctx), a smaller model or more boards")
        return lines
    lines += ["", (f"best fit: {chosen['scheme']}, --split {chosen['split']} (layers per board; RSS: predicted "
                   "peak, RAM: what must stay resident)")]
    lines += [(f"{'board':<22} {'role':<7} {'layers':>9} {'weights':>8} {'KV':>6} {'RSS MiB':>8} {'RAM MiB':>8} "
               f"{'budget':>7}")]
    for b in chosen["boards"]:
        span = f"{b['first_layer']}-{b['first_layer'] + b['layers'] - 1}" if b["layers"] else "-"
        span += "+out" if b["output_head"] else ""
        lines.append(f"{b['device']:<22} {b['role']:<7} {span:>9} {b['weights_mib']:>8.1f} {b['kv_cache_mib']:>6.1f} "
                     f"{b['total_mib']:>8.1f} {b['needed_mib']:>8.1f} {b['budget_mib']:>7.0f}")
    return lines
