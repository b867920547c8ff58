"""``ddpm eval --metric fid,is,kid,pr[,bpd]``: the paper's protocol on a tiny run: the samples of a sampling job,
scored against the run's data, with everything that moves the number in the report; a second run reuses them."""

import io
import json
import tarfile
import types

import numpy as np
import pytest

from ddpm.evaluation import protocol
from helpers import TINY, one_line_error, run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from ddpm.cli.commands import main

    run_dir = tmp_path_factory.mktemp("protocol") / "run"
    assert main(["train", "--data", "mnist", "--out", str(run_dir), "--steps", "2", *TINY]) == 0
    return run_dir


def test_eval_scores_a_sampling_jobs_samples_and_says_how(trained, capsys, tmp_path):
    # `--metric` is the alias of `--metrics`; the other tests spell it `--metrics`
    argv = ["eval", "--run", trained, "--metric", "fid,is,kid,pr,bpd", "--n", "40", "--sampler", "ddim",
            "--steps", "3", "--bpd-n", "4", "--quiet", "--cache-dir", tmp_path]
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    r = json.loads((trained / "eval" / "metrics.json").read_text())
    assert {"fid", "is", "kid", "precision", "recall", "bpd"} <= set(r)
    assert (r["n"], r["ref_n"], r["ref"], r["features"]) == (40, 5000, "mnist", "digits")
    assert (r["step"], r["weights"], r["sampler"], r["steps"], r["seed"]) == (2, "EMA", "ddim", 3, 0)
    assert r["bpd"]["data"]["n"] == 4 and r["bpd"]["data"]["bits_per_dim"] > 0
    samples = protocol.samples_file(trained / "eval", r["sampling"])
    assert samples.name.startswith("samples-step2-ddim3-ema-seed0-n40-") and r["samples"] == str(samples)
    assert f"FD {r['fid']:.4f}" in out and "bits/dim data" in out
    assert {k: r["sampling"][k] for k in ("sampler", "steps", "eta", "precision", "weights", "first_seed", "n")} == \
        {"sampler": "ddim", "steps": 3, "eta": 0.0, "precision": "fp32", "weights": "EMA", "first_seed": 0, "n": 40}
    # the very images ddpm sample draws for seeds 0-39
    assert run(capsys, "sample", "--run", trained, "--seeds", "0-39", "--sampler", "ddim", "--steps", "3",
               "--out", tmp_path / "same.npz", "--quiet")[0] == 0
    with np.load(samples) as a, np.load(tmp_path / "same.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"])
    code, out, err = run(capsys, *argv[:4], "fid", *argv[5:])  # again: the samples are reused, not drawn
    assert code == 0 and "40 drawn by an earlier run" in out
    assert json.loads((trained / "eval" / "metrics.json").read_text())["fid"] == pytest.approx(r["fid"], rel=1e-12)


@pytest.mark.parametrize("extra, expected", [
    (["--metrics", "fd,fid"], "fd is the quick Fréchet distance"),
    (["--metrics", "fid", "--samples", "x.npz"], "ddpm metrics x.npz --ref DATA --metrics fid"),
    (["--metrics", "fid", "--sampler", "ddim", "--steps", "2,3"], "--steps takes one value"),
    (["--metrics", "bpd", "--ref", "mnist"], "--ref is for the metrics of samples"),
    (["--metrics", "fid,bleu"], "unknown metric 'bleu'"),
    (["--metrics", "fid", "--n", "1"], "--metrics fid needs --n >= 2 samples, got 1"),
    (["--metrics", "fid,is", "--n", "12"], "--metrics is needs --n >= 20 samples, got 12"),
    (["--metrics", "fd", "--samples", "x.npz", "--steps", "5"], "--samples scores the samples given, so --steps would "
                                                                "do nothing"),
])
def test_eval_flags_that_do_not_fit_are_one_line(trained, capsys, tmp_path, extra, expected):
    code, _, err = run(capsys, "eval", "--run", trained, *extra, "--out", tmp_path / "e")
    assert code != 0 and expected in one_line_error(err)
    assert not (tmp_path / "e").exists()  # checked before anything is drawn or written


def test_bits_per_dim_of_a_cifar_run_on_its_train_and_test_splits(tmp_path, monkeypatch):
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz"):
        pass
    asked = []
    monkeypatch.setattr("ddpm.evaluation.reports.real_images", lambda spec, *a, **k: asked.append(spec) or [0, 1])
    monkeypatch.setattr("ddpm.evaluation.reports.bpd_report", lambda ckpt, real, **k: {"n": k["n"]})
    ckpt = types.SimpleNamespace(config=types.SimpleNamespace(train=types.SimpleNamespace(data=str(archive))))
    splits = protocol.bpd_splits(ckpt, None, n=5, seed=0, ema=True, batch_size=5)
    assert list(splits) == ["train", "test"] and asked == [str(archive), f"{archive}:test"]
    asked.clear()
    assert list(protocol.bpd_splits(ckpt, "mnist", n=5, seed=0, ema=True, batch_size=5)) == ["data"]
    assert asked == ["mnist"]


@pytest.mark.parametrize("change", [["--eta", "0.5"], ["--spacing", "quadratic"], ["--precision", "bf16"],
                                    ["--no-ema"], ["--seed", "1"]],
                         ids=["eta", "spacing", "precision", "raw-weights", "seed"])
def test_a_changed_setting_draws_its_own_samples_and_scores_as_a_fresh_folder(trained, capsys, tmp_path, change):
    """The same folder, a setting changed: new samples, the number a fresh folder gives (once, a rerun with another
    --eta reused the first run's samples and printed their KID)."""
    base = ["eval", "--run", trained, "--metrics", "kid", "--n", "24", "--sampler", "ddim", "--steps", "3", "--eta",
            "1", "--quiet", "--cache-dir", tmp_path / "c"]
    assert run(capsys, *base, "--out", tmp_path / "used")[0] == 0
    first = json.loads((tmp_path / "used" / "metrics.json").read_text())
    assert run(capsys, *base, *change, "--out", tmp_path / "used")[0] == 0
    again = json.loads((tmp_path / "used" / "metrics.json").read_text())
    assert run(capsys, *base, *change, "--out", tmp_path / "fresh")[0] == 0
    fresh = json.loads((tmp_path / "fresh" / "metrics.json").read_text())
    assert again["kid"] == fresh["kid"] and again["kid"] != first["kid"]
    assert again["samples"] != first["samples"] and again["sampling"] == fresh["sampling"] != first["sampling"]


def test_the_reference_is_read_as_the_run_read_its_data(tmp_path, capsys):
    """A run trained on wide images with --resize pad is scored against padded images (no second, centre-cropped
    cache of its data is built), and a parquet run with its own image column evaluates."""
    from PIL import Image

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from ddpm.cli.commands import main

    wide = tmp_path / "wide"
    wide.mkdir()
    rng = np.random.default_rng(0)
    for i in range(30):
        Image.fromarray(rng.integers(0, 256, (8, 24), dtype=np.uint8)).save(wide / f"{i:02d}.png")
    cache = tmp_path / "cache"
    tiny = ["--preset", "tiny", "--steps", "2", "--batch-size", "4", "--T", "30", "--quiet", "--cache-dir", cache]
    assert main(["train", "--data", str(wide), "--out", str(tmp_path / "pad"), "--resize", "pad", *map(str, tiny)]) == 0
    builds = sorted(p.name for p in cache.iterdir() if p.is_dir() and p.name != "ref_stats")
    evaluate = ["--metrics", "kid", "--n", "24", "--sampler", "ddim", "--steps", "2", "--quiet", "--cache-dir", cache]
    code, _, err = run(capsys, "eval", "--run", tmp_path / "pad", *evaluate)
    assert code == 0, err
    assert sorted(p.name for p in cache.iterdir() if p.is_dir() and p.name != "ref_stats") == builds

    blobs = []
    for i in range(30):
        b = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(b, format="PNG")
        blobs.append({"bytes": b.getvalue(), "path": None})
    table = pa.table({"pic": pa.array(blobs, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
                      "note": pa.array(["x"] * 30)})
    pq.write_table(table, tmp_path / "pics.parquet")
    assert main(["train", "--data", str(tmp_path / "pics.parquet"), "--image-column", "pic", "--out",
                 str(tmp_path / "pq"), *map(str, tiny)]) == 0
    code, _, err = run(capsys, "eval", "--run", tmp_path / "pq", *evaluate)
    assert code == 0, err


def test_bits_per_dim_and_fd_are_rank_0s_work_under_torchrun(trained, tmp_path, monkeypatch, capsys):
    """Every rank of `torchrun ... eval --metric bpd` used to compute and rewrite the same reports (racing on the
    folder's list of ddpm's files); ranks other than 0 now leave at once, writing nothing."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, out, err = run(capsys, "eval", "--run", trained, "--metric", "bpd", "--n", "2", "--out", tmp_path / "e")
    assert code == 0 and not (tmp_path / "e").exists() and "bits/dim" not in out
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    code, out, err = run(capsys, "eval", "--run", trained, "--metric", "bpd", "--n", "2", "--out", tmp_path / "e")
    assert code == 0 and (tmp_path / "e" / "bpd.json").is_file() and "bits/dim" in out


def test_reports_of_several_evals_keep_what_each_measured(trained, tmp_path, capsys):
    """An is, kid and pr eval, then a fid-only one with the same settings: metrics.json (and the setting's own
    metrics-KEY.json) hold all five scores. fd runs of one setting merge their rows in fd-KEY.csv, and a one-row
    fd report does not leave an earlier run's plot beside it."""
    out = tmp_path / "e"
    base = ["eval", "--run", trained, "--n", "24", "--sampler", "ddim", "--steps", "3", "--quiet", "--out", out,
            "--cache-dir", tmp_path / "c"]
    assert run(capsys, *base, "--metric", "is,kid,pr")[0] == 0
    assert run(capsys, *base, "--metric", "fid")[0] == 0
    r = json.loads((out / "metrics.json").read_text())
    assert {"fid", "is", "kid", "precision", "recall"} <= set(r)
    (per_setting,) = out.glob("metrics-*.json")
    assert json.loads(per_setting.read_text()) == r
    fd = ["eval", "--run", trained, "--metric", "fd", "--n", "6", "--sampler", "ddim", "--quiet", "--out",
          tmp_path / "f"]
    assert run(capsys, *fd, "--steps", "2,3")[0] == 0 and (tmp_path / "f" / "fd_vs_steps.png").is_file()
    assert run(capsys, *fd, "--steps", "4")[0] == 0 and not (tmp_path / "f" / "fd_vs_steps.png").exists()
    assert len((tmp_path / "f" / "fd.csv").read_text().splitlines()) == 2  # this run's one row
    (merged,) = (tmp_path / "f").glob("fd-*.csv")
    assert [line.split(",")[1] for line in merged.read_text().splitlines()[1:]] == ["2", "3", "4"]


def test_a_class_conditional_eval_draws_the_nearest_balanced_set_and_says_so(tiny_runs, capsys, tmp_path):
    assert protocol.balanced_n(50000, 3) == 50001 and protocol.balanced_n(25, 10) == 20
    assert protocol.balanced_n(20, 6, at_least=20) == 24 and protocol.balanced_n(3, 10) == 10
    code, out, err = run(capsys, "eval", "--run", tiny_runs[1], "--metric", "kid", "--n", "26", "--sampler", "ddim",
                         "--steps", "2", "--quiet", "--out", tmp_path / "e", "--cache-dir", tmp_path)
    assert code == 0, err
    assert "drawing 30 samples, not 26: the run's 10 classes are drawn in equal numbers (3 each)" in err
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert report["n"] == 30 and report["sampling"]["n"] == 30
