"""One model over llama.cpp's RPC backend: two `ggufkit worker` processes on loopback plus the local CPU.

References: the unsplit run of the same file in llama.cpp (greedy tokens), llama.cpp's own per-device buffer
sizes (its load log), the worker processes' VmHWM from /proc, and the openai client against `serve --rpc`.
"""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

from ggufkit.edge import group, memory
from ggufkit.edge.devices import get_device
from ggufkit.runtime import rpc

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "The capital of France is"
N_TOKENS = 12

# A head in its own process (ggml cannot take a device out of its list again): greedy token ids, llama.cpp's
# buffer sizes per device, and optionally a prompt that fills the context.
_HEAD = r"""
import json, sys
from ggufkit import runtime
from ggufkit.runtime import rpc, backends
backends.ensure()
path, workers, split, n_ctx, fill = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
kwargs = {}
if workers:
    plan = rpc.setup(workers, split, rpc.block_count(path))
    kwargs = plan.kwargs
import llama_cpp
llm = llama_cpp.Llama(path, n_ctx=n_ctx, n_threads=2, verbose=True, **kwargs)
if fill:
    n_vocab = llm.n_vocab()
    llm.eval([llm.token_bos()] + [(i * 7919) % (n_vocab - 200) + 100 for i in range(fill - 1)])
    print(json.dumps({"ids": []}))
else:
    tokens = runtime.prompt_tokens(llm, PROMPT)
    stats = runtime.GenerationStats()
    "".join(runtime.generate(llm, tokens, runtime.Sampling(max_tokens=N_TOKENS, temp=0), stats))
    print(json.dumps({"ids": stats.token_ids}))
""".replace("PROMPT", repr(PROMPT)).replace("N_TOKENS", str(N_TOKENS))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def vm_hwm(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1)) * 1024


@pytest.fixture(scope="module")
def demo_q8(demo_dir):
    from convert_fixtures import converted

    return converted(demo_dir, "q8_0")


@pytest.fixture
def workers(tmp_path):
    """Two fresh `ggufkit worker` processes on free loopback ports: [(endpoint, ggufkit proc, rpc-server pid)]."""
    out = []
    for i in range(2):
        port = free_port()
        with open(tmp_path / f"worker{i}.log", "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "worker", "--port", str(port), "--threads",
                                     "1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        endpoint = rpc.Endpoint("127.0.0.1", port)
        deadline = time.monotonic() + 60
        while not rpc.reachable(endpoint):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / f"worker{i}.log").read_text()
            time.sleep(0.1)
        import psutil

        children = psutil.Process(proc.pid).children()
        assert len(children) == 1 and "rpc-server" in children[0].name(), children
        out.append((endpoint, proc, children[0].pid))
    yield out
    for _, proc, _ in out:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=30)


def head(path, workers_arg="", split="", n_ctx=512, fill=0) -> tuple[list[int], dict[str, float], str]:
    """(greedy ids, {device: model buffer MiB} from llama.cpp's log, stderr) of one head process."""
    proc = subprocess.run([sys.executable, "-c", _HEAD, str(path), workers_arg, split, str(n_ctx), str(fill)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    buffers = {m.group(1): float(m.group(2))
               for m in re.finditer(r"load_tensors:\s+(\S+) model buffer size =\s+([\d.]+) MiB", proc.stderr)}
    return json.loads(proc.stdout.strip().splitlines()[-1])["ids"], buffers, proc.stderr


# ---- pure parts

def test_offload_kwargs_reproduce_the_counts_under_llama_cpps_rule():
    """llama.cpp's placement rule (src/llama-model.cpp): position j of the g offloaded positions goes to the first
    device whose normalised cumulative split exceeds j/g; re-implemented here on float32 as llama.cpp does."""
    import numpy as np

    for n_layer, weights in [(30, [1, 1, 1]), (30, [9, 11, 10]), (24, [5, 0, 3]), (32, [1, 2, 3, 4]), (7, [1, 1])]:
        counts = rpc.layer_counts(n_layer, weights)
        assert sum(counts) == n_layer
        kw = rpc.offload_kwargs(counts)
        g = kw["n_gpu_layers"]
        i_gpu_start = max(n_layer + 1 - g, 0)
        splits = np.cumsum(np.array(kw["tensor_split"], dtype=np.float32), dtype=np.float32)
        splits = splits / splits[-1]
        placed = [0] * len(counts)
        for il in range(n_layer + 1):
            if il < i_gpu_start:
                placed[0] += il < n_layer
                continue
            dev = int(np.searchsorted(splits, np.float32(il - i_gpu_start) / np.float32(g), side="right"))
            placed[1 + dev] += 1
            if il == n_layer:
                assert dev == len(counts) - 2  # the output head on the last worker
        placed[-1] -= 1  # the output head
        assert placed == counts, (n_layer, weights)


def test_parse_errors_are_one_line():
    with pytest.raises(Exception, match="not HOST:PORT"):
        rpc.parse_endpoints("host:notaport")
    with pytest.raises(Exception, match="listed twice"):
        rpc.parse_endpoints("a:1,a:1")
    with pytest.raises(Exception, match="3 weights for 2 devices"):
        rpc.parse_split("1,1,1", 2)
    assert rpc.parse_split("auto", 3) is None
    assert rpc.parse_endpoints("10.0.0.2") == [rpc.Endpoint("10.0.0.2", 50052)]


def test_unreachable_worker_is_a_one_line_error(demo_q8):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "ggufkit.cli", "run", str(demo_q8), "--rpc", f"127.0.0.1:{port}",
                           "-p", "hi", "-n", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 4
    lines = proc.stderr.strip().splitlines()
    assert lines == [(f"error: worker 127.0.0.1:{port}: cannot connect: Connection refused (is `ggufkit worker` "
                      "running there?)")], proc.stderr


def test_worker_refuses_a_busy_port_and_warns():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "ggufkit.cli", "worker", "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 4, proc.stderr
    assert "no authentication" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: worker 127.0.0.1:{port}: rpc-server could not "
                                                           "listen"), proc.stderr


def test_worker_mem_limit_refuses_the_buffers_with_an_error(demo_q8, tmp_path):
    """--mem 40: the worker cannot take 15 layers + the output head (~83 MiB); the head's load fails with a
    one-line error (exit 4), and the worker keeps running."""
    port = free_port()
    with open(tmp_path / "worker.log", "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "worker", "--port", str(port), "--mem", "40",
                                   "--threads", "1"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        endpoint = rpc.Endpoint("127.0.0.1", port)
        deadline = time.monotonic() + 60
        while not rpc.reachable(endpoint):
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc = subprocess.run([sys.executable, "-m", "ggufkit.cli", "run", str(demo_q8), "--rpc", str(endpoint),
                               "--split", "1,1", "-p", "hi", "-n", "2"], cwd=ROOT, capture_output=True, text=True,
                              timeout=600, check=False)
        assert proc.returncode == 4, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "may not have the memory for its layers" in last, proc.stderr
        assert "failed to allocate" in (tmp_path / "worker.log").read_text()
        assert worker.poll() is None
    finally:
        worker.terminate()
        worker.wait(timeout=30)


# ---- the split against llama.cpp

def test_three_way_split_same_greedy_tokens_and_buffers_as_planned(demo_q8, workers):
    """CPU + two workers, 10 layers each: the same greedy tokens as the unsplit run, and llama.cpp puts on each
    device exactly the bytes the group plan assigns to it."""
    ref, _, _ = head(demo_q8)
    endpoints = ",".join(str(e) for e, _, _ in workers)
    ids, buffers, _ = head(demo_q8, endpoints, "1,1,1")
    assert len(ref) == N_TOKENS and ids == ref
    assert set(buffers) == {"CPU_Mapped"} | {f"RPC0[{e}]" for e, _, _ in workers}, buffers
    shape = memory.shape_from_gguf(demo_q8)
    laptop = get_device("laptop-16gb")
    plan = group.plan_group(shape, [laptop] * 3, 512, counts=[10, 10, 10])
    got = [buffers["CPU_Mapped"]] + [buffers[f"RPC0[{e}]"] for e, _, _ in workers]
    for member, mib in zip(plan.members, got):
        assert abs(member.weights / memory.MIB - mib) <= 0.01 * mib + 0.05, (member.as_dict(), buffers)
    assert all(vm_hwm(pid) > 30 * memory.MIB for _, _, pid in workers)  # the layers really were on the workers


def test_fit_devices_split_and_worker_peak_rss_within_15_percent(demo_q8, workers):
    """`fit --devices` picks the split; a head running it with a context-filling prompt; each rpc-server's
    VmHWM against the plan's prediction."""
    n_ctx = 1024
    proc = subprocess.run([sys.executable, "-m", "ggufkit.cli", "fit", str(demo_q8), "--devices",
                           "laptop-16gb,laptop-8gb,rpi5-8gb", "--ctx", str(n_ctx), "--json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    row = report["file"]
    counts = [int(c) for c in row["split"].split(",")]
    assert sum(counts) == 30 and all(c > 0 for c in counts) and row["fits"]
    endpoints = ",".join(str(e) for e, _, _ in workers)
    head(demo_q8, endpoints, row["split"], n_ctx=n_ctx, fill=n_ctx - 8)
    for board, (_, _, pid) in zip(row["boards"][1:], workers):
        measured = vm_hwm(pid)
        predicted = board["total_mib"] * memory.MIB
        assert abs(predicted / measured - 1) <= 0.15, (board, measured / memory.MIB)


# ---- dying workers

def test_run_with_a_worker_killed_mid_generation_ends_with_one_line(demo_q8, workers):
    endpoints = ",".join(str(e) for e, _, _ in workers)
    proc = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "run", str(demo_q8), "--rpc", endpoints,
                             "--split", "1,1,1", "-p", PROMPT, "-n", "400", "--temp", "0"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.read(1)  # the first generated byte: generation is running
    assert first, proc.stderr.read().decode()
    os.kill(workers[1][2], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 4, err.decode()
    assert err.decode().strip().splitlines()[-1].startswith(f"error: RPC worker {workers[1][0]} went away"), err


def test_run_with_a_worker_stopped_mid_generation_ends_with_one_line(demo_q8, workers):
    """SIGSTOP: the worker's kernel keeps acknowledging, so only the stall watch (--rpc-timeout) ends the wait."""
    endpoints = ",".join(str(e) for e, _, _ in workers)
    proc = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "run", str(demo_q8), "--rpc", endpoints,
                             "--split", "1,1,1", "-p", PROMPT, "-n", "400", "--temp", "0", "--rpc-timeout", "10"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stopped = workers[0][2]
    try:
        first = proc.stdout.read(1)  # the first generated byte: generation is running
        assert first, proc.stderr.read().decode()
        os.kill(stopped, signal.SIGSTOP)
        _, err = proc.communicate(timeout=300)
    finally:
        os.kill(stopped, signal.SIGCONT)
    assert proc.returncode == 4, err.decode()
    last = err.decode().strip().splitlines()[-1]
    assert last == f"error: RPC worker {workers[0][0]} stopped answering (no reply for 10 s; --rpc-timeout)", err


def test_serve_rpc_restarts_without_a_stopped_worker(demo_q8, workers, tmp_path):
    """A worker stopped (not dead) mid-request: the request ends with an error naming it, /health stays 200, and
    the model restarts on the devices that still answer."""
    openai = pytest.importorskip("openai")
    port = free_port()
    endpoints = ",".join(str(e) for e, _, _ in workers)
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "serve", str(demo_q8), "--port", str(port),
                                   "--rpc", endpoints, "--split", "1,1,1", "--max-tokens", "400", "--ctx", "1024",
                                   "--rpc-timeout", "10"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    stopped = workers[1][2]
    try:
        _wait_ok(server, base, tmp_path / "serve.log")
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
        stream = client.completions.create(model="m", prompt=PROMPT, max_tokens=400, temperature=0, stream=True)
        pieces = iter(stream)
        next(pieces)
        os.kill(stopped, signal.SIGSTOP)
        with pytest.raises((openai.APIError, openai.APIConnectionError)) as info:
            for _ in pieces:
                pass
        assert (f"RPC worker {workers[1][0]} stopped answering" in str(info.value)
                or isinstance(info.value, openai.APIConnectionError)), info.value
        assert server.poll() is None and _get(base + "/health")[0] == 200
        deadline = time.monotonic() + 600
        while True:
            try:
                again = client.completions.create(model="m", prompt=PROMPT, max_tokens=4, temperature=0)
                break
            except openai.APIStatusError as e:
                assert e.status_code == 503 and "retry" in e.message, e
                assert time.monotonic() < deadline
                time.sleep(1)
        assert again.choices[0].text
        health = _get(base + "/health")[1]
        assert health["status"] == "ok" and [w["in_use"] for w in health["workers"]] == [True, False], health
    finally:
        os.kill(stopped, signal.SIGCONT)
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


def _wait_ok(server, base: str, log: Path) -> None:
    deadline = time.monotonic() + 600
    while True:
        assert server.poll() is None, log.read_text()
        try:
            if _get(base + "/health")[1]["status"] == "ok":
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.5)


def _get(url: str, timeout: float = 10) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, json.loads(r.read())


def test_serve_rpc_answers_openai_and_survives_a_dying_worker(demo_q8, workers, tmp_path):
    openai = pytest.importorskip("openai")
    port = free_port()
    endpoints = ",".join(str(e) for e, _, _ in workers)
    with open(tmp_path / "serve.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "serve", str(demo_q8), "--port", str(port),
                                   "--rpc", endpoints, "--split", "1,1,1", "--max-tokens", "400", "--ctx", "1024"],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if _get(base + "/health")[1]["status"] == "ok":
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.5)
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
        answer = client.completions.create(model="m", prompt=PROMPT, max_tokens=N_TOKENS, temperature=0,
                                           extra_body={"repeat_penalty": 1.0})  # the library's default
        ref, _, _ = head(demo_q8)
        direct = llama_cpp.Llama(str(demo_q8), n_ctx=512, verbose=False)
        expected = direct.detokenize(ref).decode("utf-8", "replace")
        del direct
        assert answer.choices[0].text == expected

        # a streaming request; the second worker dies after the first token
        stream = client.completions.create(model="m", prompt=PROMPT, max_tokens=400, temperature=0, stream=True)
        pieces = iter(stream)
        next(pieces)
        os.kill(workers[1][2], signal.SIGKILL)
        with pytest.raises((openai.APIError, openai.APIConnectionError)) as info:
            for _ in pieces:
                pass
        assert str(workers[1][0]) in str(info.value) or isinstance(info.value, openai.APIConnectionError)
        assert server.poll() is None
        status, health = _get(base + "/health")
        assert status == 200
        # the next request: a clear 503 while the model reloads on the CPU + the remaining worker, then an answer
        deadline = time.monotonic() + 600
        while True:
            try:
                again = client.completions.create(model="m", prompt=PROMPT, max_tokens=N_TOKENS, temperature=0,
                                              extra_body={"repeat_penalty": 1.0})
                break
            except openai.APIStatusError as e:
                assert e.status_code == 503 and "retry" in e.message, e
                assert time.monotonic() < deadline
                time.sleep(1)
        assert again.choices[0].text == expected
        status, health = _get(base + "/health")
        assert health["status"] == "ok" and health["restarts"] == 1
        assert [w["in_use"] for w in health["workers"]] == [True, False]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)


# ---- planning and bundles (no model run)

def test_group_plan_accounts_for_every_byte_and_respects_budgets(demo_q8):
    """The per-board weights add up to the file's tensor bytes (+ the tied embedding llama.cpp duplicates as the
    output), the KV cache to memory.estimate's, and a small board gets fewer layers than a big one."""
    shape = memory.shape_from_gguf(demo_q8)
    boards = [get_device("rpi5-8gb"), get_device("rpi5-8gb"), get_device("rpi4-4gb")]
    plan = group.plan_group(shape, boards, 4096)
    _, embd, output, _ = group.layer_weights(shape)
    assert sum(m.weights for m in plan.members) == shape.weight_bytes + embd  # tied: output = token_embd again
    assert output > embd  # the output head: the duplicated embedding plus output_norm
    assert sum(m.kv_cache for m in plan.members) == memory.estimate(shape, 4096).kv_cache
    assert sum(plan.counts) == shape.n_layer and plan.counts[2] < plan.counts[1]
    assert plan.members[-1].output and not any(m.output for m in plan.members[:-1])


def test_fit_devices_text_and_errors(demo_q8):
    from click.testing import CliRunner

    from ggufkit.cli import cli, main

    res = CliRunner().invoke(cli, ["fit", str(demo_q8), "--devices", "rpi5-8gb,rpi4-4gb", "--ctx", "2048"])
    assert res.exit_code == 0, res.output
    assert "best fit:" in res.output and "--split" in res.output and "+out" in res.output
    assert main(["fit", str(demo_q8), "--devices", "rpi5-8gb,nosuchboard"]) == 1
    assert main(["fit", str(demo_q8), "--devices", "rpi5-8gb"]) == 1
    assert main(["fit", str(demo_q8)]) == 2  # neither --device nor --devices


def test_deploy_devices_writes_a_bundle_per_board(demo_q8, tmp_path):
    from ggufkit.cli import main

    out = tmp_path / "group"
    assert main(["deploy", str(demo_q8), "--devices", "rpi5-8gb,rpi5-8gb,rpi4-4gb", "--workers",
                 "10.0.0.12,10.0.0.13:50060", "-o", str(out), "--ctx", "4096"]) == 0
    dirs = sorted(p.name for p in out.iterdir())
    assert dirs == ["head-rpi5-8gb", "worker1-rpi5-8gb", "worker2-rpi4-4gb"]
    plan = group.plan_group(memory.shape_from_gguf(demo_q8), [get_device(n) for n in
                                                              ("rpi5-8gb", "rpi5-8gb", "rpi4-4gb")], 4096)
    head_unit = (out / "head-rpi5-8gb" / "ggufkit.service").read_text()
    assert f"--rpc 10.0.0.12:50052,10.0.0.13:50060 --split {plan.split}" in head_unit
    assert (out / "head-rpi5-8gb" / demo_q8.name).stat().st_size == demo_q8.stat().st_size
    worker = (out / "worker2-rpi4-4gb" / "ggufkit-worker.service").read_text()
    assert f"ggufkit worker --host 0.0.0.0 --port 50060 --mem {int(plan.members[2].budget / memory.MIB)}" in worker
    assert not list((out / "worker1-rpi5-8gb").glob("*.gguf"))
    import shlex

    from ggufkit.commands import serve as serve_cmd
    from ggufkit.commands import worker as worker_cmd

    def exec_start(text):
        return shlex.split(next(line for line in text.splitlines() if line.startswith("ExecStart=")).split("=", 1)[1])

    argv = exec_start(head_unit)  # the real commands parse what the units run
    ctx = serve_cmd.command.make_context("serve", argv[2:], resilient_parsing=True)
    assert ctx.params["rpc"] == "10.0.0.12:50052,10.0.0.13:50060" and ctx.params["split"] == plan.split
    ctx = worker_cmd.command.make_context("worker", exec_start(worker)[2:], resilient_parsing=True)
    assert ctx.params["port"] == 50060 and ctx.params["host"] == "0.0.0.0"
    from ggufkit.edge.bundle import sdist_name

    for d in dirs:  # the scripts parse, and each board installs ggufkit from the sdist in its bundle
        script = out / d / "install.sh"
        assert os.access(script, os.X_OK)
        assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0
        sdist = out / d / sdist_name()
        with tarfile.open(sdist) as tar:
            assert tar.getmember(f"{sdist_name()[:-len('.tar.gz')]}/pyproject.toml")
        assert f'GGUFKIT_SPEC="${{GGUFKIT_SPEC:-$PWD/{sdist_name()}}}"' in script.read_text()
    assert main(["deploy", str(demo_q8), "--devices", "rpi5-8gb,rpi4-4gb", "--workers", "a,b", "-o",
                 str(tmp_path / "g2")]) == 1
    assert not (tmp_path / "g2").exists()


@pytest.mark.skipif(__import__("shutil").which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_group_units_pass_systemd_analyze_verify(demo_q8, tmp_path):
    from ggufkit.cli import main

    prefix = tmp_path / "opt"
    (prefix / "venv/bin").mkdir(parents=True)
    stub = prefix / "venv/bin/ggufkit"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    out = tmp_path / "group"
    assert main(["deploy", str(demo_q8), "--devices", "rpi5-8gb,rpi4-4gb", "--workers", "10.0.0.12", "-o", str(out),
                 "--prefix", str(prefix)]) == 0
    for unit in [out / "head-rpi5-8gb" / "ggufkit.service", out / "worker1-rpi4-4gb" / "ggufkit-worker.service"]:
        proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (unit, proc.stderr)
