"""What a CUDA machine would hit, checked on the CPU: torch.cuda mocked where the code asks it, the GPU-only branches
run with CPU (or meta) tensors, host syncs counted."""

import json
import sys

import numpy as np
import pytest
import torch

from ddpm.errors import DDPMError
from helpers import stop_at_call


@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda answering as a machine with GPUs of compute capability ``cap[0]`` would."""
    cap = [(8, 0)]
    asked = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts there: not used

    def capability(device=None):
        asked.append(device)
        return cap[0]

    monkeypatch.setattr(torch.cuda, "get_device_capability", capability)
    return cap, asked


def test_torchrun_ranks_each_take_the_gpu_of_their_local_rank(fake_cuda, monkeypatch):
    from ddpm.runtime import choose_device

    assert choose_device("cuda") == torch.device("cuda", 0)  # one process: an index, for set_device
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert choose_device("cuda") == choose_device("auto") == choose_device("cuda:2") == torch.device("cuda", 2)
    with pytest.raises(DDPMError, match="each process uses the GPU of its local rank.*CUDA_VISIBLE_DEVICES"):
        choose_device("cuda:0")  # every rank on GPU 0
    assert choose_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("cap, training, expected", [((7, 0), True, "fp16"), ((7, 5), False, "fp32"),
                                                     ((8, 0), True, "bf16"), ((9, 0), False, "bf16")])
def test_auto_precision_follows_the_compute_capability_of_the_runs_gpu(cap, training, expected, fake_cuda):
    from ddpm.runtime import resolve_precision

    fake_cuda[0][0] = cap
    dev = torch.device("cuda", 1)
    assert resolve_precision("auto", dev,
                             training=training) == expected  # V100/T4: fp16 + GradScaler, not emulated bf16
    assert fake_cuda[1][-1] == dev  # the run's device, not the current one


def test_tf32_and_cudnn_benchmark_on_cuda_only(monkeypatch):
    from ddpm.runtime import fast_cuda_math

    flags = (torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"), \
        (torch.backends.cudnn, "benchmark")
    before = [getattr(o, n) for o, n in flags]
    try:
        for o, n in flags:
            setattr(o, n, False)
        fast_cuda_math(torch.device("cpu"), training=True)
        assert [getattr(o, n) for o, n in flags] == [False, False, False]
        fast_cuda_math(torch.device("cuda", 0))
        assert [getattr(o, n) for o, n in flags] == [True, True, False]
        fast_cuda_math(torch.device("cuda", 0), training=True)
        assert torch.backends.cudnn.benchmark
    finally:
        for (o, n), v in zip(flags, before):
            setattr(o, n, v)


def test_the_gpu_attention_path_passes_4d_tensors_and_equals_the_cpu_path(monkeypatch):
    import torch.nn.functional as F

    import ddpm.nn.unet as unet

    real, seen = F.scaled_dot_product_attention, []

    def recording(q, k, v, *a, **kw):
        seen.append(q.ndim)
        return real(q, k, v, *a, **kw)

    monkeypatch.setattr(unet.F, "scaled_dot_product_attention", recording)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 64, 32, generator=g) for _ in range(3))
    fused, plain = unet.attend(q, k, v, fused=True), unet.attend(q, k, v, fused=False)
    assert seen == [4]  # [B, heads, L, d]: what the flash / memory-efficient kernels take
    assert fused.shape == plain.shape == (3, 64, 32)
    assert torch.allclose(fused, plain, atol=1e-5)


def test_training_loss_with_a_cpu_generator_and_data_elsewhere():
    from ddpm import GaussianDiffusion, NoiseSchedule

    d = GaussianDiffusion(NoiseSchedule.linear(T=50))
    x0 = torch.zeros(4, 1, 8, 8, device="meta")  # a device other than the generator's
    out = d.training_loss(lambda x, t: x, x0, generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == (4,)


def test_schedule_tables_go_to_the_device_once():
    from ddpm.diffusion.gaussian import extract, on_device

    table = torch.linspace(0, 1, 10, dtype=torch.float64)
    like = torch.zeros(3, 1, 2, 2, device="meta")
    t = torch.tensor([0, 4, 9], device="meta")
    extract(table, t, like)
    first = on_device(table, "meta")
    extract(table, t, like)
    assert on_device(table, "meta") is first and on_device(table, "cpu") is table


def test_editors_keep_every_tensor_on_the_images_device():
    """RePaint and SDEdit with the images, mask and model on a device other than the CPU generators': nothing is
    mixed (on a GPU a CPU tensor in the step would fail or copy every step)."""
    from ddpm import GaussianDiffusion, NoiseSchedule
    from ddpm.rng import ImageGenerators
    from ddpm.sampling.editing import RePaint, SDEdit
    from ddpm.sampling.samplers import make_sampler

    d = GaussianDiffusion(NoiseSchedule.linear(T=30))
    known = torch.zeros(2, 1, 8, 8, device="meta")
    mask = torch.ones(2, 1, 8, 8, device="meta")
    model = lambda x, t: x * 0  # noqa: E731
    out = RePaint(d, 10, jump=3, resample=2)(model, (2, 1, 8, 8), known=known, mask=mask,
                                             generator=ImageGenerators(range(2)), device="meta")
    assert out.device.type == "meta" and out.shape == (2, 1, 8, 8)
    for name in ("respaced", "ddim", "sde-dpm++"):
        out = SDEdit(make_sampler(name, d, steps=6), 0.7)(model, (2, 1, 8, 8), known=known,
                                                           noise_seeds=torch.tensor([3, 4]),
                                                           generator=ImageGenerators(range(2)), device="meta")
        assert out.device.type == "meta", name


def test_a_job_records_its_device_and_refuses_another(tmp_path, capsys, monkeypatch):
    import ddpm.sampling.generation
    from ddpm.cli.commands import main

    run = tmp_path / "run"
    assert main(["train", "--data", "mnist", "--out", str(run), "--steps", "2", "--preset", "tiny", "--batch-size",
                 "4", "--quiet", "--T", "30"]) == 0
    out = tmp_path / "s.npz"
    argv = ["sample", "--run", str(run), "--out", str(out), "--n", "4", "--chunk", "2", "--sampler", "ddim",
            "--steps", "3"]
    real = stop_at_call(monkeypatch, ddpm.sampling.generation, "generate", 2)  # Ctrl-C in the second chunk
    assert main(argv) == 130
    monkeypatch.setattr(ddpm.sampling.generation, "generate", real)
    job = tmp_path / ".s.npz.parts" / "job.json"
    spec = json.loads(job.read_text())
    assert spec["device"] == "cpu" and spec["noise"] == "per-image-blocks-v3"
    job.write_text(json.dumps({**spec, "device": "cuda"}))  # as if started on a GPU
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "holds a job started on cuda: cuda and cpu draw different noise" in err and "Traceback" not in err
    assert not out.exists()


def test_missing_chunks_are_dealt_out_evenly_after_a_resume(tmp_path):
    from ddpm.sampling.jobs import JobSpec, SampleJob

    spec = JobSpec(run="r", step=1, ema=True, sampler="ddim", steps=3, eta=0.0, spacing=None, guidance=0.0,
                   classes=None, first_seed=0, n=20, precision="fp32", chunk=2)
    job = SampleJob(tmp_path / "s.npz", spec)
    job.parts.mkdir()
    for k in (0, 2, 4, 6, 8):  # what rank 0 of two drew before a kill
        (job.parts / f"chunk-{k:06d}.npz").write_bytes(b"")
    a, b = job.missing(0, 2), job.missing(1, 2)
    assert sorted(a + b) == [1, 3, 5, 7, 9] and abs(len(a) - len(b)) <= 1 and not set(a) & set(b)


def test_each_process_has_its_own_dropout_stream_and_resume_needs_no_gpu_state(monkeypatch):
    from ddpm.rng import rng_state, seed_step, set_rng_state

    def draws(rank, step):
        seed_step(0, rank, step, torch.device("cpu"))
        return torch.rand(8)

    assert torch.equal(draws(0, 5), draws(0, 5))  # a resumed step draws what it drew the first time
    assert not torch.equal(draws(0, 5), draws(1, 5)) and not torch.equal(draws(0, 5), draws(0, 6))
    state = rng_state()
    assert "cuda" not in state
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda s: pytest.fail("restored another machine's GPUs"))
    set_rng_state({**state, "cuda": ["AAAA"] * 8})  # a checkpoint from 8 visible GPUs, resumed with fewer


@pytest.mark.parametrize("options", [{}, {"t_sampling": "importance", "objective": "hybrid",
                                           "diffusion": {"var_type": "learned-range"}}])
def test_a_training_step_waits_for_the_device_once(monkeypatch, options):
    """Every .item()/.tolist()/.cpu()/bool()/float() that ddpm's own code calls in a step is a host sync on a GPU;
    a step makes one (the finiteness check, which carries the stop flag), and reading its numbers is up to the
    caller (a log row)."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from helpers import tiny_config, tiny_trainer

    calls = []

    def counting(name):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *a, **k):
            caller = sys._getframe(1).f_code.co_filename
            # batches.py assembles examples on the host from CPU generators: its tensors never live on the GPU
            if "/ddpm/" in caller and "/tests/" not in caller and not caller.endswith("batches.py"):
                calls.append((name, caller.rsplit("/", 1)[-1], sys._getframe(1).f_lineno))
            return real(self, *a, **k)

        return wrapper

    tr = tiny_trainer(tiny_config(steps=10, log_every=100, **options))
    tr.train_step()  # the first step sets things up
    for name in ("item", "tolist", "cpu", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counting(name))
    for _ in range(3):
        out = tr.train_step()
    assert len(calls) == 3, calls
    monkeypatch.undo()
    numbers = out.numbers()
    assert np.isfinite(numbers["loss"]) and len(numbers["quarters"]) == 8


def test_a_batch_draws_its_noise_in_far_fewer_calls_than_images_times_steps(monkeypatch):
    """On a GPU every RNG call is a kernel launch: 256 images x 1000 steps must not be 256,000 of them."""
    from ddpm import GaussianDiffusion, NoiseSchedule
    from ddpm.rng import ImageGenerators, block_steps
    from ddpm.sampling.samplers import make_sampler

    real, calls = torch.randn, [0]

    def counting(*a, **k):
        calls[0] += 1
        return real(*a, **k)

    sampler = make_sampler("respaced", GaussianDiffusion(NoiseSchedule.linear(T=100)), steps=32)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    gens = ImageGenerators(range(8))
    draws, per_step = [0], gens.randn

    def drawing(*a, **k):
        draws[0] += 1
        return per_step(*a, **k)

    gens.randn = drawing
    monkeypatch.setattr(torch, "randn", counting)
    sampler(model, (8, 1, 8, 8), generator=gens)
    monkeypatch.undo()
    assert draws[0] >= 32 and block_steps((1, 8, 8)) == 16 == block_steps((3, 64, 64))  # x_T and the steps' noise
    assert block_steps((3, 256, 256)) == 1 and 256 * block_steps((3, 128, 128)) * 3 * 128 * 128 * 4 <= 256 << 20
    assert calls[0] == 8 * -(-draws[0] // 16) < 8 * draws[0] / 10
    # and an image's noise is still its seed's alone: image 5 alone draws what it drew among eight
    one, all8 = ImageGenerators([5]), ImageGenerators(range(8))
    for _ in range(20):
        assert torch.equal(one.randn((1, 1, 8, 8)), all8.randn((8, 1, 8, 8))[5:6])


def test_a_chunk_is_about_a_minute_of_sampling(monkeypatch):
    """A kill costs a chunk: sized from the measured speed (here a network call of 0.5 s for a batch of 4, 200
    steps: 25 s an image), so a slow network on a CPU does not put hours into one chunk."""
    import time
    from types import SimpleNamespace

    from ddpm.sampling.jobs import CHUNK, chunk_for_a_minute

    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])

    class Slow(torch.nn.Module):
        config = SimpleNamespace(num_classes=0)

        def __init__(self, seconds):
            super().__init__()
            self.seconds = seconds

        def forward(self, x, t):
            clock[0] += self.seconds
            return x

    sampler = SimpleNamespace(steps=200, calls=200)
    assert chunk_for_a_minute(Slow(0.5), sampler, (3, 8, 8), batch_size=4, n=5000) == 4  # a batch at least
    assert chunk_for_a_minute(Slow(0.01), sampler, (3, 8, 8), batch_size=4, n=5000) == 120  # 0.5 s an image
    assert chunk_for_a_minute(Slow(1e-5), sampler, (3, 8, 8), batch_size=4, n=5000) == CHUNK
    assert chunk_for_a_minute(Slow(1e-5), sampler, (3, 8, 8), batch_size=4, n=300) == 300
    resampling = SimpleNamespace(steps=200, calls=400)  # RePaint's jumps: twice the calls of its steps
    assert chunk_for_a_minute(Slow(0.01), resampling, (3, 8, 8), batch_size=4, n=5000) == 60
    clock[0] = 0.0
    assert chunk_for_a_minute(Slow(100.0), sampler, (3, 8, 8), batch_size=64, n=50) == 50 and clock[0] == 0.0


def test_on_several_nodes_rank_0_decides_the_resume_step(tmp_path, monkeypatch):
    """Each node lists checkpoints on its own file system: a rank that cannot see the one rank 0 resumes from makes
    every rank fail with one line (an all-reduce of the check), never a hang or a silent mix of steps."""
    import torch.distributed as dist

    import ddpm.training.train as train
    from ddpm.run.directory import save_checkpoint

    net = torch.nn.Linear(2, 2)
    for step in (3, 6):
        save_checkpoint(tmp_path / "run", step=step, model=net, ema_model=net)
    rank0 = [6]
    monkeypatch.setattr(train, "rank_world", lambda: (1, 2))
    monkeypatch.setattr(dist, "broadcast", lambda t, src: t.fill_(rank0[0]))
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t)  # this rank's answer stands for the minimum
    assert [p.name for p in train.agreed_checkpoints(tmp_path / "run", "cpu")] == ["step-00000003", "step-00000006"]
    rank0[0] = 3  # rank 0 sees less: this rank resumes where rank 0 does, not from its own newest
    assert [p.name for p in train.agreed_checkpoints(tmp_path / "run", "cpu")] == ["step-00000003"]
    rank0[0] = 9  # rank 0 sees a checkpoint this node does not
    with pytest.raises(DDPMError, match="cannot see checkpoint step 9.*a file system every node shares"):
        train.agreed_checkpoints(tmp_path / "run", "cpu")


def test_batches_are_prefetched_on_a_thread_for_a_gpu_only():
    """Beside a CPU step's OpenMP threads a prefetch thread slowed training 12-30%; a GPU step leaves the CPU free."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from ddpm.data.batches import Prefetcher
    from helpers import tiny_config, tiny_trainer

    tr = tiny_trainer(tiny_config())
    cpu, gpu = Prefetcher(tr.batches, [range(4)], "cpu"), Prefetcher(tr.batches, [range(4)], "cuda")
    try:
        assert cpu._pool is None and gpu._pool is not None
        assert all(torch.equal(a, b) for a, b in zip(cpu.get(3)[0][:3], tr.batches.make(3, range(4))[:3]))
    finally:
        cpu.close(), gpu.close()


def test_the_decoders_rows_alone_or_every_row_masked_give_the_same_bits_and_gradients():
    """On a CPU the t = 0 rows alone are decoded; on a GPU every row is, masked (choosing rows would wait for the
    device): the two give one value and one gradient, and float32 agrees with the float64 of bits/dim."""
    from ddpm.diffusion.gaussian import _decoder_bits
    from ddpm.diffusion.losses import discretized_gaussian_log_likelihood, mean_bits_per_dim

    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 256, (6, 3, 4, 4), generator=g).float() / 127.5 - 1
    t = torch.tensor([0, 5, 0, 9, 2, 0])
    grads = []
    for select in (True, False):
        mean = (x0 + 0.02 * torch.randn(x0.shape, generator=g.manual_seed(1))).requires_grad_()
        log_scale = torch.full_like(x0, -4.0).requires_grad_()
        bits = _decoder_bits(x0, mean, log_scale, t == 0, select=select)
        bits.sum().backward()
        grads.append((bits.detach(), mean.grad, log_scale.grad))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-6) and torch.isfinite(a).all()
    assert (grads[0][0][t != 0] == 0).all() and (grads[0][1][t != 0] == 0).all()
    wide = mean_bits_per_dim(-discretized_gaussian_log_likelihood(x0, mean.detach(), log_scale.detach()))
    assert torch.allclose(grads[1][0][t == 0].double(), wide[t == 0], rtol=1e-5)


def test_no_float64_reaches_a_device_without_it():
    """MPS has no float64: sums kept there, the importance sampler's history and the schedule's tables are
    float32 on it (checked here by asking as MPS would: accumulator_dtype, and the trainer with it)."""
    from ddpm import runtime
    from ddpm.training import steps, trainer

    assert runtime.accumulator_dtype("mps") == torch.float32 and runtime.accumulator_dtype("cpu") == torch.float64
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from helpers import tiny_config, tiny_trainer

    narrow = lambda device: torch.float32  # noqa: E731
    with pytest.MonkeyPatch.context() as m:
        m.setattr(runtime, "accumulator_dtype", narrow)
        m.setattr(trainer, "accumulator_dtype", narrow)
        m.setattr(steps, "accumulator_dtype", narrow)
        tr = tiny_trainer(tiny_config(steps=4, t_sampling="importance", objective="vlb",
                                      diffusion={"var_type": "learned"}))
        assert tr.timesteps.history.dtype == torch.float32
        out = tr.train_step()
        assert out.loss.dtype == torch.float32 and np.isfinite(out.numbers()["loss"])
