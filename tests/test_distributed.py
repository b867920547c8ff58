"""Results that do not depend on how the global batch is split: torchrun processes and --grad-accum."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from helpers import tiny_config, tiny_trainer


def _weights(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _max_diff(a, b):
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_grad_accum_gives_the_weights_of_one_batch():
    runs = {}
    start = None
    for accum in (1, 3, 4):
        cfg = tiny_config(steps=4, batch_size=12, grad_accum=accum)
        cfg = type(cfg)(preset=cfg.preset, model=type(cfg.model)(**{**cfg.model.to_dict(), "dropout": 0.0}),
                        diffusion=cfg.diffusion, train=cfg.train)
        tr = tiny_trainer(cfg)
        start = start or _weights(tr)
        losses = [tr.train_step().numbers()["loss"] for _ in range(4)]
        runs[accum] = (_weights(tr), losses)
    base, base_losses = runs[1]
    assert _max_diff(base, runs[3][0]) < 1e-5 and _max_diff(base, runs[4][0]) < 1e-5
    assert runs[3][1] == pytest.approx(base_losses, rel=1e-5)
    assert _max_diff(base, start) > 1e-3  # training moved the weights far beyond the tolerance


def test_micro_batches_cover_the_batch_once():
    tr = tiny_trainer(tiny_config(batch_size=10, grad_accum=3))
    parts = tr.micro_batches()
    assert [len(r) for r in parts] == [4, 3, 3]
    assert [i for r in parts for i in r] == list(range(10))


def _train(tmp_path, name, nproc, steps=4, resume=False, extra=()):
    out = tmp_path / name
    args = ["-m", "ddpm", "--", "train", "--out", str(out), "--steps", str(steps), "--quiet"]
    if resume:
        args.append("--resume")
    else:
        args += ["--data", "mnist", "--preset", "tiny", "--batch-size", "8", "--T", "50", "--log-every", "2",
                 "--save-every", "2", "--precision", "fp32", *extra]  # bf16 rounding would depend on the split
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    else:
        cmd = [sys.executable, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = out / "checkpoints" / f"step-{steps:08d}"
    return load_file(str(ckpt / "model.safetensors")), load_file(str(ckpt / "ema.safetensors")), out, res.stderr


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The one-process run of a setting (its flags), trained once for the module: the reference that the torchrun
    tests compare with, and the run that their sampling jobs read."""
    root, runs = tmp_path_factory.mktemp("one-process"), {}

    def get(extra=()):
        if tuple(extra) not in runs:
            runs[tuple(extra)] = _train(root, f"run{len(runs)}", 1, extra=extra)
        return runs[tuple(extra)]

    return get


# every option whose state or arithmetic the processes must share: labels and the null class, the importance
# sampler's loss history, the hybrid objective's learned variance, v-prediction
EVERY_OPTION = ("--class-cond", "--p-uncond", "0.3", "--t-sampling", "importance", "--var-type", "learned-range",
                "--objective", "hybrid", "--predict", "v", "--T", "21", "--batch-size", "32", "--eval-every", "2",
                "--eval-n", "12", "--eval-steps", "4", "--ema-profiles", "0.05,0.1")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("extra", [EVERY_OPTION, "folder"], ids=["every-option", "cached-folder"])
def test_two_torchrun_processes_give_the_weights_of_one(extra, tmp_path, one_process):
    if extra == "folder":  # rank 0 builds the decoded cache while rank 1 waits, then both memory-map it
        import numpy as np
        from PIL import Image

        (tmp_path / "imgs").mkdir()
        rng = np.random.default_rng(0)
        for i in range(40):
            Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
        extra = ("--data", str(tmp_path / "imgs"))
    one_model, one_ema, _, _ = one_process(extra) if extra == EVERY_OPTION else _train(tmp_path, "one", 1, extra=extra)
    two_model, two_ema, out, err = _train(tmp_path, "two", 2, extra=extra)
    if "--class-cond" in extra:
        assert "label_emb.weight" in one_model
    assert _max_diff(one_model, two_model) < 1e-5 and _max_diff(one_ema, two_ema) < 1e-5
    assert err.count("training ") == 1  # only rank 0 talks
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + steps 2 and 4, written once
    if "--eval-every" in extra:  # the processes share the evaluation's samples: the FD of one process's
        from ddpm.run.metrics import read_metrics

        one_fd, two_fd = ([r["fd"] for r in read_metrics(run / "metrics.csv")] for run in (one_process(extra)[2], out))
        assert len(two_fd) == 2 and two_fd == pytest.approx(one_fd, rel=1e-3)
        assert len(list((out / "ema-snapshots").glob("*.safetensors"))) == 2


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_resume_under_torchrun(tmp_path, one_process):
    """The plain run on two processes, stopped at step 2 and resumed: the weights of one process's uninterrupted
    run, with rank 0 alone talking and writing."""
    one_model, one_ema, _, _ = one_process()
    _, _, _, first = _train(tmp_path, "two", 2, steps=2)
    two_model, two_ema, out, err = _train(tmp_path, "two", 2, steps=4, resume=True)
    assert "resuming" in err and first.count("training ") == 1 and err.count("training ") == 1
    assert _max_diff(one_model, two_model) < 1e-5 and _max_diff(one_ema, two_ema) < 1e-5
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + steps 2 and 4, each written once


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("cond", [(), ("--class", "all", "--guidance", "1")], ids=["unconditional", "guided"])
def test_torchrun_sampling_writes_the_one_process_output_byte_for_byte(cond, tmp_path, one_process):
    """`torchrun ... -m ddpm -- sample ...` (the form torchrun's own parser leaves alone) shares the chunks between
    the processes; rank 0 assembles. On a CPU with the same threads per process, the .npz equals one process's."""
    _, _, run, _ = one_process(EVERY_OPTION if cond else ())
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"s{nproc}.npz"
        args = ["-m", "ddpm", "--", "sample", "--run", str(run), "--n", "20", "--chunk", "3", "--out", str(out),
                "--sampler", "ddim", "--steps", "6", "--eta", "1", *cond]
        cmd = [sys.executable, *args] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                          "--standalone", f"--nproc_per_node={nproc}", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stderr.count("wrote 20 samples") == 1  # rank 0 alone reports
        outs[nproc] = out.read_bytes()
    assert outs[1] == outs[2]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_inpainting_writes_the_one_process_output_byte_for_byte(tmp_path, one_process):
    """An edit job is a sampling job: under torchrun the processes share its chunks, rank 0 assembles."""
    _, _, run, _ = one_process()
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"f{nproc}.npz"
        args = ["-m", "ddpm", "--", "inpaint", "--run", str(run), "mnist:0-4", "--mask", "strokes", "--n", "2",
                "--chunk", "3", "--steps", "6", "--jump", "2", "--resample", "2", "--out", str(out)]
        cmd = [sys.executable, *args] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                          "--standalone", f"--nproc_per_node={nproc}", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stderr.count("wrote 10 completions") == 1  # rank 0 alone reports
        outs[nproc] = out.read_bytes()
    assert outs[1] == outs[2]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_torchrun_eval_draws_the_samples_of_one_process_and_scores_once(tmp_path, one_process):
    import json

    _, _, run, _ = one_process()
    for nproc in (1, 2):
        args = ["-m", "ddpm", "--", "eval", "--run", str(run), "--metric", "fid,kid", "--n", "24", "--sampler", "ddim",
                "--steps", "3", "--out", str(tmp_path / f"e{nproc}"), "--quiet", "--cache-dir", str(tmp_path / "c")]
        cmd = [sys.executable, *args] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                          "--standalone", f"--nproc_per_node={nproc}", *args]
        res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                             timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        assert res.stdout.count("FD ") == 1  # rank 0 alone scores and reports
    one, two = (json.loads((tmp_path / f"e{k}" / "metrics.json").read_text()) for k in (1, 2))
    assert one["fid"] == pytest.approx(two["fid"], rel=1e-9) and one["n"] == two["n"] == 24


INJECT = '''"""`ddpm` with a failure injected into rank 1: a full disk on its chunk writes, or a broken step."""
import errno
import os
import sys

if os.environ.get("RANK") == "1":
    if sys.argv[1] == "write":
        import ddpm.sampling.generation as samplers

        def full_disk(*a, **k):
            raise OSError(errno.EFBIG, "File too large", "/data/chunk-000001.npz")

        samplers.generate = full_disk
    elif sys.argv[1] == "stale":  # its node's listing of the job's parts is out of date: it shows no chunk
        import pathlib

        real_is_file = pathlib.Path.is_file
        pathlib.Path.is_file = lambda self: False if self.name.startswith("chunk-") else real_is_file(self)
    elif sys.argv[1] == "read":
        import ddpm.run.directory as directory

        def bad_disk(*a, **k):
            raise OSError(errno.EIO, "Input/output error", "/data/run/checkpoints/step-00000004/ema.safetensors")

        directory.load_checkpoint = bad_disk
        import ddpm.run.weights as weights

        weights.load_checkpoint = bad_disk  # what the commands call it through
    else:
        import ddpm.training.trainer as trainer
        from ddpm.errors import DDPMError

        real = trainer.Trainer.train_step

        def broken(self):
            if self.step == 2:
                raise DDPMError("the loss became nan at step 3 (injected on rank 1)")
            return real(self)

        trainer.Trainer.train_step = broken
from ddpm.cli.commands import main

sys.exit(main(sys.argv[2:]))
'''


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
@pytest.mark.parametrize("command", ["sample", "eval", "train"])
def test_one_failing_process_ends_the_job_quickly_and_says_why(command, tmp_path, one_process):
    """Rank 1 fails (its disk is full, or its step breaks) while rank 0 works or waits in a collective: the job ends
    within seconds, not at --dist-timeout (120 minutes), rank 1's line names its rank and the cause, torchrun's
    summary carries it (its error file), and rank 0 says that another process failed, without a traceback."""
    import time

    (tmp_path / "inject.py").write_text(INJECT)
    _, _, run, _ = one_process()
    args = {"sample": ["write", "sample", "--run", str(run), "--n", "40", "--chunk", "4", "--out",
                       str(tmp_path / "s.npz"),
                       "--sampler", "ddim", "--steps", "3"],
            "eval": ["read", "eval", "--run", str(run), "--metric", "kid", "--n", "40", "--sampler", "ddim", "--steps",
                     "3", "--out", str(tmp_path / "e")],
            "train": ["step", "train", "--data", "mnist", "--out", str(tmp_path / "r"), "--preset", "tiny", "--steps",
                      "6", "--batch-size", "8", "--T", "30"]}[command]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "inject.py"), args[0], "--", *args[1:], "--quiet"]
    t0 = time.monotonic()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
                         cwd=tmp_path)
    assert res.returncode != 0 and time.monotonic() - t0 < 120
    cause = {"write": "ddpm: rank 1: error: no space to write (File too large: /data/chunk-000001.npz)",
             "read": "ddpm: rank 1: error: [Errno 5] Input/output error: '/data/run/checkpoints/step-00000004/",
             "step": "ddpm: rank 1: error: the loss became nan at step 3 (injected on rank 1)"}[args[0]]
    lines = res.stderr.splitlines()
    assert any(line.startswith(cause) for line in lines), res.stderr[-3000:]
    assert any(line.strip().startswith("traceback : " + cause) for line in lines)  # torchrun's summary
    frames = [line for line in lines if line.strip().startswith(("File ", "[rank0]:   File ", "[rank1]:   File "))]
    assert not [f for f in frames if "/ddpm/" in f], res.stderr[-3000:]  # torchrun's own frames only


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_processes_share_a_resumed_job_by_rank_0s_listing(tmp_path, one_process, monkeypatch):
    """A job stopped after some chunks, continued on two processes whose second sees a stale listing of the parts
    (as NFS caches one on another node): the chunks left are dealt out from rank 0's listing, so none is drawn
    twice or forgotten (by their own listings rank 0 would draw chunks 3 and 5, rank 1 chunks 1, 3 and 5, and chunk
    4 nobody), and the output is the one-process output, byte for byte."""
    import ddpm.sampling.generation
    from ddpm.cli.commands import main
    from helpers import stop_at_call

    (tmp_path / "inject.py").write_text(INJECT)
    _, _, run, _ = one_process()
    argv = ["sample", "--run", str(run), "--n", "24", "--chunk", "4", "--sampler", "ddim", "--steps", "3", "--quiet"]
    assert main([*argv, "--out", str(tmp_path / "whole.npz")]) == 0
    real = stop_at_call(monkeypatch, ddpm.sampling.generation, "generate", 4)  # chunks 0-2 of six drawn
    assert main([*argv, "--out", str(tmp_path / "cut.npz")]) == 130
    monkeypatch.setattr(ddpm.sampling.generation, "generate", real)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(tmp_path / "inject.py"), "stale", "--", *argv, "--out", str(tmp_path / "cut.npz")]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "12 of them were drawn by an earlier run" in res.stderr
    assert (tmp_path / "cut.npz").read_bytes() == (tmp_path / "whole.npz").read_bytes()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _two_nodes(tmp_path, tag, command):
    """``command`` (ddpm's arguments) on two "nodes" on this machine: two torchrun agents of one process each,
    meeting by c10d rendezvous; node i reads its data cache from tmp_path/cache-i, as a node's local disk."""
    port, procs = _free_port(), []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=localhost:{port}", f"--rdzv-id={tag}", "-m", "ddpm", "--", *command,
               *(["--cache-dir", str(tmp_path / f"cache-{node}")] if command[0] == "train" else [])]
        procs.append(subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    return outs


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_nodes_train_stop_resume_and_sample_together(tmp_path):
    """Two nodes (localhost) train a run on a shared run directory with --resume auto, each decoding the data into
    its own cache once; the same command continues it to the weights of an uninterrupted 2-process run, bit for
    bit; then they share a resumable sampling job whose output equals one process's byte for byte."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(12):
        Image.fromarray(((np.arange(64).reshape(8, 8) * (i + 1)) % 256).astype(np.uint8)).save(images / f"{i}.png")
    args = ["--data", str(images), "--preset", "tiny", "--batch-size", "8", "--T", "50", "--image-size", "8",
            "--quiet", "--precision", "fp32", "--log-every", "2", "--save-every", "2", "--resume", "auto"]
    run, straight = tmp_path / "run", tmp_path / "straight"
    _two_nodes(tmp_path, "first", ["train", "--out", str(run), "--steps", "4", *args])
    caches = {n: sorted((tmp_path / f"cache-{n}").glob("*/meta.json")) for n in (0, 1)}
    assert all(len(c) == 1 for c in caches.values())  # one cache per node
    built = {n: c[0].stat().st_mtime_ns for n, c in caches.items()}
    _two_nodes(tmp_path, "again", ["train", "--out", str(run), "--steps", "8", *args])
    assert {n: sorted((tmp_path / f"cache-{n}").glob("*/meta.json"))[0].stat().st_mtime_ns for n in (0, 1)} == built
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                          "ddpm", "--", "train", "--out", str(straight), "--steps", "8", *args, "--cache-dir",
                          str(tmp_path / "cache-0")], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    for name in ("model", "ema", "optimizer"):
        a, b = (load_file(str(r / "checkpoints" / "step-00000008" / f"{name}.safetensors")) for r in (straight, run))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sample = ["sample", "--run", str(run), "--n", "10", "--chunk", "3", "--sampler", "ddim", "--steps", "3"]
    _two_nodes(tmp_path, "sample", [*sample, "--out", str(tmp_path / "two.npz")])
    res = subprocess.run([sys.executable, "-m", "ddpm", *sample, "--out", str(tmp_path / "one.npz")],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "two.npz").read_bytes() == (tmp_path / "one.npz").read_bytes()
