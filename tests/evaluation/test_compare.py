"""``ddpm metrics``: image sets from .npz files, folders, data sources and statistics files, scored with numbers
computed independently here; one clear line for what cannot be computed."""

import json

import numpy as np
import pytest
import torch
from test_metrics import eigen_fd

from ddpm.data.images import to_float
from ddpm.data.sources import load_data
from ddpm.errors import DDPMError
from ddpm.evaluation.compare import ImageSet, score
from ddpm.evaluation.features import load_digit_classifier
from ddpm.evaluation.inception import FIDInception
from ddpm.evaluation.metrics import inception_score
from helpers import one_line_error, run


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Two sets of 300 shipped digits as ddpm sample writes them (arr_0 uint8 [N, H, W, C]), 16 px copies, and
    ten images."""
    root = tmp_path_factory.mktemp("sets")
    digits = load_data("mnist", channels=1, image_size=28).images
    for name, part in (("a", digits[:300]), ("b", digits[1000:1300]), ("few", digits[:10])):
        np.savez(root / f"{name}.npz", arr_0=part.permute(0, 2, 3, 1).numpy())
    small = load_data("mnist", channels=1, image_size=16).images[2000:2300]
    np.savez(root / "small.npz", arr_0=small.permute(0, 2, 3, 1).numpy())
    return root, digits


def _independent(images):
    """Features and class probabilities of the shipped classifier, computed here in one batch."""
    net = load_digit_classifier()
    with torch.no_grad():
        f = net.features(to_float(images))
        return f.double().numpy(), torch.softmax(net.head(f).double(), dim=1).numpy()


def test_scores_match_independent_computations(sets, capsys):
    root, digits = sets
    code, out, err = run(capsys, "metrics", root / "a.npz", "--ref", root / "b.npz", "--metrics", "fid,is,kid,pr",
                         "--features", "digits", "--json", root / "s.json", "--quiet", "--cache-dir", root / "c")
    assert code == 0, err
    r = json.loads((root / "s.json").read_text())
    assert set(r) == {"fid", "is", "is_split_seed", "kid", "precision", "recall", "n", "ref_n", "features",
                      "feature_dim", "samples", "ref", "written_by"}
    assert (r["n"], r["ref_n"], r["features"]) == (300, 300, "digits")
    fa, pa = _independent(digits[:300])
    fb, _ = _independent(digits[1000:1300])
    stats = [(f.mean(0), np.cov(f, rowvar=False)) for f in (fa, fb)]
    assert r["fid"] == pytest.approx(eigen_fd(*stats[0], *stats[1]), rel=1e-6)
    assert r["is"] == pytest.approx(list(inception_score(pa[np.random.default_rng(0).permutation(300)])), rel=1e-6)
    assert 0 < r["precision"] <= 1 and 0 < r["recall"] <= 1 and len(r["kid"]) == 2
    assert f"FD {r['fid']:.4f}" in out and "FID" not in out and "IS " in out and "precision" in out


def test_fid_from_a_statistics_file_equals_fid_from_its_images(sets, capsys):
    root, _ = sets
    stats = root / "b_stats.npz"
    assert run(capsys, "metrics", root / "b.npz", "--save-stats", stats, "--features", "digits", "--quiet")[0] == 0
    with np.load(stats) as z:  # pytorch-fid's format
        assert z["mu"].shape == (128,) and z["sigma"].shape == (128, 128) and int(z["n"][0]) == 300
    for ref, name in ((stats, "1"), (root / "b.npz", "2")):
        assert run(capsys, "metrics", root / "a.npz", "--ref", ref, "--features", "digits", "--quiet",
                   "--json", root / f"j{name}.json", "--cache-dir", root / "c")[0] == 0
    fids = [json.loads((root / f"j{k}.json").read_text())["fid"] for k in "12"]
    assert fids[0] == pytest.approx(fids[1], rel=1e-9)


def test_a_data_source_is_read_at_the_other_sets_size(sets, capsys):
    root, _ = sets
    code, out, err = run(capsys, "metrics", "mnist", "--ref", root / "small.npz", "--metrics", "fid",
                         "--features", "digits", "--quiet", "--cache-dir", root / "c")
    assert code == 0, err
    assert "5,000 images of mnist against" in out


@pytest.mark.parametrize("argv, expected", [
    (["{r}/b_stats.npz", "--metrics", "is"], "statistics file (mu, sigma): it serves FID only, not is"),
    (["{r}/a.npz", "--ref", "{r}/b_stats.npz", "--metrics", "fid,kid"], "serves FID only, not kid"),
    (["{r}/a.npz", "--ref", "{r}/small.npz"], "the sets differ: SAMPLES are (1, 28, 28) (C, H, W), REF (1, 16, 16)"),
    (["{r}/few.npz", "--metrics", "is"], "SAMPLES has 10 images; is needs at least 20"),
    (["{r}/a.npz", "--metrics", "fid"], "fid compare two sets: pass --ref"),
    (["{r}/a.npz", "--metrics", "fid,lpips"], "unknown metric 'lpips'"),
    (["{r}/a.npz", "--n", "301"], "--n 301: SAMPLES has only 300 images"),
    (["{r}/missing.npz"], "not found"),
])
def test_what_cannot_be_computed_is_one_line(sets, capsys, argv, expected):
    root, _ = sets
    if not (root / "b_stats.npz").exists():
        run(capsys, "metrics", root / "b.npz", "--save-stats", root / "b_stats.npz", "--features", "digits", "--quiet")
    code, _, err = run(capsys, "metrics", *[a.format(r=root) for a in argv], "--features", "digits", "--quiet")
    assert code != 0 and expected in one_line_error(err)


def test_json_and_stats_files_replace_only_what_ddpm_wrote(sets, capsys):
    root, _ = sets
    mine = root / "mine.json"
    argv = ["metrics", root / "a.npz", "--metrics", "is", "--features", "digits", "--quiet", "--json", mine]
    assert run(capsys, *argv)[0] == 0
    code, _, err = run(capsys, *argv)
    assert code != 0 and "--overwrite" in one_line_error(err)
    assert run(capsys, *argv, "--overwrite")[0] == 0
    theirs = root / "theirs.json"
    theirs.write_text('{"fid": 1}')
    code, _, err = run(capsys, *argv[:-1], theirs, "--overwrite")
    assert code != 0 and "ddpm did not write it" in one_line_error(err) and theirs.read_text() == '{"fid": 1}'


def test_the_inception_score_needs_a_classifier_layer():
    net = FIDInception()  # as read from a TorchScript file: no classifier weights
    images = torch.zeros(30, 3, 8, 8, dtype=torch.uint8)
    with pytest.raises(DDPMError, match="needs the Inception's classifier layer.*pt_inception-2015-12-05"):
        score(ImageSet("s", images=images, n=30), None, ["is"], ("inception", net))


def test_the_inception_score_does_not_depend_on_the_order_samples_were_written_in(sets, capsys):
    """A class-conditional job writes its samples class by class; splits of that order would each hold one class
    and IS would fall toward 1 (a user's 40 guided samples: 1.28 against 3.01 shuffled). The splits are of a seeded
    shuffle: sorted by class or not, the same images score alike, and as independently computed."""
    root, digits = sets
    from ddpm.data.sources import load_data

    labels = load_data("mnist", channels=1, image_size=28).labels[:300]
    by_class = digits[:300][torch.argsort(labels, stable=True)]
    np.savez(root / "sorted.npz", arr_0=by_class.permute(0, 2, 3, 1).numpy())
    scores = {}
    for name in ("a", "sorted"):
        code, _, err = run(capsys, "metrics", root / f"{name}.npz", "--metrics", "is", "--features", "digits",
                           "--quiet", "--json", root / f"is-{name}.json", "--overwrite")
        assert code == 0, err
        scores[name] = json.loads((root / f"is-{name}.json").read_text())
    assert scores["sorted"]["is_split_seed"] == 0
    _, probs = _independent(by_class)
    in_order = inception_score(probs)[0]  # the splits of the written order: one or two digits each
    assert in_order < 0.5 * scores["a"]["is"][0]
    shuffled = probs[np.random.default_rng(0).permutation(300)]
    assert scores["sorted"]["is"][0] == pytest.approx(inception_score(shuffled)[0], rel=1e-6)
    assert scores["sorted"]["is"][0] == pytest.approx(scores["a"]["is"][0], rel=0.1)


def test_a_statistics_file_names_its_network_and_another_networks_is_refused(sets, capsys):
    root, _ = sets
    stats = root / "named_stats.npz"
    assert run(capsys, "metrics", root / "b.npz", "--save-stats", stats, "--features", "digits", "--quiet",
               "--overwrite")[0] == 0
    from ddpm.evaluation.features import load_digit_classifier

    with np.load(stats) as z:
        assert str(z["features"][0]) == "digits" and str(z["feature_sha256"][0]) == load_digit_classifier().sha256
        other = {k: z[k] for k in z.files}
    other["feature_sha256"] = np.array(["0" * 64])
    np.savez(root / "other_stats.npz", **other)
    code, _, err = run(capsys, "metrics", root / "a.npz", "--ref", root / "other_stats.npz", "--features", "digits",
                       "--quiet")
    assert code == 1 and "holds statistics of another digits network" in one_line_error(err)
    assert run(capsys, "metrics", root / "a.npz", "--ref", stats, "--features", "digits", "--quiet")[0] == 0


def test_cached_reference_statistics_are_keyed_by_the_size_they_were_read_at(tmp_path):
    """The same source read at two sizes, and the same pixels seen by two networks: four cache files."""
    from ddpm.evaluation.features import _cache_file, load_digit_classifier

    net = load_digit_classifier()
    a, b = torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.zeros(4, 1, 14, 56, dtype=torch.uint8)
    other = load_digit_classifier()
    other.sha256 = "f" * 64
    files = {_cache_file(tmp_path, "stats", "digits", n, x, "same-key") for n in (net, other) for x in (a, b)}
    assert len(files) == 4


def test_a_reference_larger_than_ref_n_is_scored_by_a_named_seeded_subset(sets, capsys):
    root, digits = sets
    code, out, err = run(capsys, "metrics", root / "a.npz", "--ref", "mnist", "--ref-n", "400", "--features",
                         "digits", "--quiet", "--json", root / "sub.json", "--cache-dir", root / "c")
    assert code == 0, err
    r = json.loads((root / "sub.json").read_text())
    assert (r["ref_n"], r["ref_total"], r["ref_subset_seed"]) == (400, 5000, 0)
    assert "400 of its 5,000 images, a subset of seed 0" in out
    idx = np.sort(np.random.default_rng(0).choice(5000, 400, replace=False))  # numpy's, as documented
    fa, _ = _independent(digits[:300])
    fr, _ = _independent(digits[torch.from_numpy(idx)])
    assert r["fid"] == pytest.approx(eigen_fd(fa.mean(0), np.cov(fa, rowvar=False), fr.mean(0),
                                              np.cov(fr, rowvar=False)), rel=1e-5)
    code, out, _ = run(capsys, "metrics", root / "a.npz", "--ref", "mnist", "--ref-n", "all", "--features", "digits",
                       "--quiet", "--cache-dir", root / "c")
    assert code == 0 and "(5,000 images)" in out
    code, _, err = run(capsys, "metrics", root / "a.npz", "--ref", "mnist", "--ref-n", "3", "--metrics", "pr",
                       "--features", "digits")
    assert code != 0 and one_line_error(err).endswith("REF has 3 images (--ref-n); pr needs at least 4")
