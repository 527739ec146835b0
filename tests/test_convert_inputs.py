"""Input handling of ggufkit convert: sharded checkpoints, and every kind of bad input giving a one-line error
that names the file and the problem, a non-zero exit code and no file (nor temp file) at OUT."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ggufkit.cli import main

ROOT = Path(__file__).resolve().parent.parent


def copy_checkpoint(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def reshard(ckpt: Path, n: int = 3) -> Path:
    """Split model.safetensors into n shards + model.safetensors.index.json, as save_pretrained does."""
    tensors = load_file(ckpt / "model.safetensors")
    names = list(tensors)
    weight_map = {}
    for i in range(n):
        part = names[i::n]
        fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: tensors[k] for k in part}, ckpt / fname, metadata={"format": "pt"})
        weight_map |= {k: fname for k in part}
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return ckpt


def edit_tensors(ckpt: Path, change) -> None:
    """Rewrite model.safetensors after change(dict of tensors) edits it in place."""
    tensors = load_file(ckpt / "model.safetensors")
    change(tensors)
    save_file(tensors, ckpt / "model.safetensors", metadata={"format": "pt"})


def edit_config(ckpt: Path, **changes) -> None:
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg.update(changes)
    (ckpt / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def tiny(tiny_checkpoint, tmp_path):
    return copy_checkpoint(tiny_checkpoint("llama"), tmp_path / "tiny-llama")


def run_cli(args, capsys) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def assert_fails(args, out: Path, capsys, code: int, *needles: str) -> str:
    rc, err = run_cli([*map(str, args), "-o", str(out), "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")], "temp file left behind"
    return lines[0]


def test_sharded_checkpoint_converts_like_the_single_file(tiny_checkpoint, tmp_path, capsys):
    single = tiny_checkpoint("llama")
    sharded = reshard(copy_checkpoint(single, tmp_path / "sharded" / single.name))  # same name, same metadata
    for src, out in ((single, tmp_path / "a.gguf"), (sharded, tmp_path / "b.gguf")):
        assert run_cli(["convert", str(src), "--scheme", "q8_0", "-o", str(out), "--quiet"], capsys)[0] == 0
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()


def test_missing_config(tiny, tmp_path, capsys):
    (tiny / "config.json").unlink()
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, "config.json", "missing")


def test_unknown_model_type_lists_supported(tiny, tmp_path, capsys):
    edit_config(tiny, model_type="gpt_neox")
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, "config.json", "gpt_neox", " llama,", " mistral,")


def test_unhandled_config_feature(tiny, tmp_path, capsys):
    edit_config(tiny, num_local_experts=8)
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, "config.json", "num_local_experts")


def test_missing_shard(tiny, tmp_path, capsys):
    reshard(tiny)
    (tiny / "model-00002-of-00003.safetensors").unlink()
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, "model-00002-of-00003.safetensors", "missing")


def test_truncated_shard(tiny, tmp_path, capsys):
    reshard(tiny)
    shard = tiny / "model-00003-of-00003.safetensors"
    os.truncate(shard, shard.stat().st_size - 1000)
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, shard.name, "truncated")


@pytest.mark.parametrize("header,problem", [(b"{not json", "not valid JSON"),
                                            (b"\xff" * 8, "header length")], ids=["json", "length"])
def test_corrupt_header(tiny, tmp_path, capsys, header, problem):
    path = tiny / "model.safetensors"
    data = bytearray(path.read_bytes())
    if problem == "header length":
        data[:8] = header
    else:
        data[8:8 + len(header)] = header
    path.write_bytes(bytes(data))
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, "model.safetensors", problem)


def test_missing_tensor(tiny, tmp_path, capsys):
    edit_tensors(tiny, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, "model.safetensors", "blk.1.ffn_up.weight",
                 "missing")


def test_tensor_of_wrong_shape(tiny, tmp_path, capsys):
    def shrink(t):
        t["model.layers.0.mlp.down_proj.weight"] = t["model.layers.0.mlp.down_proj.weight"][:, :256].clone()
    edit_tensors(tiny, shrink)
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, "model.safetensors",
                 "model.layers.0.mlp.down_proj.weight", "[256, 256]", "[256, 512]")


def test_unsupported_dtype(tiny, tmp_path, capsys):
    def to_int8(t):
        t["model.layers.0.self_attn.v_proj.weight"] = t["model.layers.0.self_attn.v_proj.weight"].to(torch.int8)
    edit_tensors(tiny, to_int8)
    assert_fails(["convert", tiny], tmp_path / "o.gguf", capsys, 1, "model.safetensors", "I8", "not supported")


@pytest.mark.parametrize("scheme", ["f16", "q4_k_m"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weight(tiny, tmp_path, capsys, bad, scheme):
    def poison(t):
        t["model.layers.1.mlp.down_proj.weight"][3, 7] = bad
    edit_tensors(tiny, poison)
    assert_fails(["convert", tiny, "--scheme", scheme], tmp_path / "o.gguf", capsys, 1, "model.safetensors",
                 "model.layers.1.mlp.down_proj.weight", "NaN/Inf", "row 3, col 7")


def test_missing_source_dir(tmp_path, capsys):
    assert_fails(["convert", tmp_path / "nope"], tmp_path / "o.gguf", capsys, 1, "nope", "no such directory")


def test_unknown_hub_id_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    assert_fails(["convert", "nobody-here/no-such-model"], tmp_path / "o.gguf", capsys, 1,
                 "nobody-here/no-such-model", "not in the Hugging Face cache")


def test_output_directory_missing(tiny, tmp_path, capsys):
    rc, err = run_cli(["convert", str(tiny), "-o", str(tmp_path / "no" / "o.gguf"), "--quiet"], capsys)
    assert rc == 3 and err.startswith("error: ") and "does not exist" in err, err


def _as_subprocess(args, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ggufkit.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, preexec_fn=preexec, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_output_directory_not_writable(tiny, tmp_path):
    out_dir = tmp_path / "ro"
    out_dir.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root ignores permission bits: use a read-only tmpfs instead
        mount = ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(out_dir)]
        mounted = subprocess.run(mount, check=False).returncode == 0
        if not mounted:
            pytest.fail("running as root and cannot mount a read-only tmpfs to test an unwritable directory")
    else:
        out_dir.chmod(0o555)
    try:
        r = _as_subprocess(["convert", tiny, "-o", out_dir / "o.gguf", "--quiet", "--scheme", "q8_0"])
        assert r.returncode == 3, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and str(out_dir) in lines[0], r.stderr
        assert not any(out_dir.iterdir())
    finally:
        if mounted:
            subprocess.run(["umount", str(out_dir)], check=True)
        out_dir.chmod(0o755)


def test_disk_full(tiny, tmp_path):
    """The output outgrows a 1 MB file size limit (RLIMIT_FSIZE; SIGXFSZ ignored so write() fails with EFBIG
    the way it fails with ENOSPC on a full disk): exit 3, one line, nothing left behind."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    out = tmp_path / "out" / "o.gguf"
    out.parent.mkdir()
    r = _as_subprocess(["convert", tiny, "-o", out, "--quiet", "--scheme", "q8_0"], preexec=limit)
    assert r.returncode == 3, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "disk full" in lines[0], r.stderr
    assert not any(out.parent.iterdir())


def test_ctrl_c_leaves_nothing(demo_dir, tmp_path):
    """SIGINT while tensors are being written: exit 130, no OUT, no temp file. The moment is exact, not timed:
    the writer stops itself once its temp file holds 20 MB (GGUFKIT_TEST_STOP_AT_BYTES), and the signal arrives
    while it is stopped."""
    import time

    from test_crash_safety import default_sigint

    out = tmp_path / "o.gguf"
    proc = subprocess.Popen([sys.executable, "-m", "ggufkit.cli", "convert", str(demo_dir), "--scheme", "f32",
                             "-o", str(out), "--quiet"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "GGUFKIT_TEST_STOP_AT_BYTES": "20000000"},
                            preexec_fn=default_sigint)  # noqa: PLW1509 (one signal() call)
    try:
        deadline = time.monotonic() + 300  # a guard against a hang, not the synchronisation
        while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "T":
            assert proc.poll() is None and time.monotonic() < deadline, "the conversion never reached 20 MB"
            time.sleep(0.02)
        temps = list(tmp_path.glob(".o.gguf.*"))
        assert temps and temps[0].stat().st_size >= 20_000_000, "stopped while writing tensor data"
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGCONT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["error: interrupted"], err
    assert not any(tmp_path.iterdir())


def test_hub_id_from_the_cache_offline(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """SRC as a hub id: resolved by huggingface-hub from its cache with HF_HUB_OFFLINE=1; named after the repo."""
    src = tiny_checkpoint("llama")
    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-llama"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(src, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert run_cli(["convert", "tiny-org/tiny-llama", "--scheme", "q8_0", "--quiet"], capsys)[0] == 0
    assert (tmp_path / "tiny-llama-Q8_0.gguf").is_file()
