"""A PyTorch MambaAD with the official state-dict keys (lewandofskee/MambaAD), the reference of the parity tests.

Written for the tests from the paper and the official structure (not copied): ``MAMBAAD`` = ``net_t`` (ResNet
stages 1-3) + ``mff_oce`` + ``net_s`` (MambaUPNet of LSS modules of HSS blocks, SS2D with 8 scan directions).
The selective scan is a plain sequential loop and the Hilbert order comes from ``numpy-hilbert-curve`` (the
package the official code uses), so neither shares code with ssm_jax.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from hilbert import decode
from torch import nn

from tests.convert.torch_resnet import TorchBlock, TorchResNet


def hilbert_order(size):
    """Raster index visited at each step: numpy-hilbert-curve's ``decode``, column = first coordinate."""
    locs = decode(np.arange(size * size), 2, int(math.log2(size)))
    return (locs[:, 0] + locs[:, 1] * size).astype(np.int64)


def selective_scan(u, delta, A, B, C, D, delta_bias):
    """mamba_ssm ``selective_scan_ref`` with grouped B/C (b, K, N, L), softplus on, no z."""
    delta = F.softplus(delta + delta_bias[None, :, None])
    batch, channels, length = u.shape
    groups = B.shape[1]
    Bx = B.repeat_interleave(channels // groups, dim=1)
    Cx = C.repeat_interleave(channels // groups, dim=1)
    state = u.new_zeros(batch, channels, A.shape[1])
    ys = []
    for t in range(length):
        state = torch.exp(delta[:, :, t, None] * A) * state + (delta[:, :, t] * u[:, :, t])[..., None] * Bx[..., t]
        ys.append((state * Cx[..., t]).sum(-1))
    return torch.stack(ys, -1) + u * D[None, :, None]


class Scans(nn.Module):
    """Stores the order as the official HSCANS does (frozen parameters ``index_flat``/``index_flat_inv``)."""

    def __init__(self, size):
        super().__init__()
        order = torch.from_numpy(hilbert_order(size))
        self.index_flat = nn.Parameter(order[None, None], requires_grad=False)
        self.index_flat_inv = nn.Parameter(torch.argsort(order)[None, None], requires_grad=False)

    def encode(self, x):  # (b, d, L) raster -> along the curve
        return x[..., self.index_flat[0, 0]]

    def decode(self, x):
        return x[..., self.index_flat_inv[0, 0]]


class TorchSS2D(nn.Module):
    def __init__(self, d_model, size, d_state=16, expand=2, directions=8):
        super().__init__()
        d = int(expand * d_model)
        r = math.ceil(d_model / 16)
        self.d_state, self.dt_rank, self.k = d_state, r, directions
        self.in_proj = nn.Linear(d_model, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.x_proj_weight = nn.Parameter(torch.randn(directions, r + 2 * d_state, d) * d ** -0.5)
        self.dt_projs_weight = nn.Parameter(torch.randn(directions, d, r) * r ** -0.5)
        self.dt_projs_bias = nn.Parameter(torch.randn(directions, d) * 0.5 - 3.0)
        self.A_logs = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(directions * d, 1)
                                   + 0.1 * torch.randn(directions * d, d_state))
        self.Ds = nn.Parameter(1.0 + 0.1 * torch.randn(directions * d))
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, d_model, bias=False)
        self.scans = Scans(size)

    def view(self, x, i):
        """View i (map, transpose, rot90, rot90 transposed) of (b, d, h, w), flattened and read along the curve."""
        rot = torch.rot90(x, 1, dims=(2, 3))
        m = [x, x.transpose(2, 3), rot, rot.transpose(2, 3)][i]
        return self.scans.encode(m.reshape(m.shape[0], m.shape[1], -1))

    def unview(self, seq, i, h, w):
        """Inverse of ``view``: (b, d, L) along the curve -> (b, d, h, w) map."""
        b, d, _ = seq.shape
        raster = self.scans.decode(seq)
        if i == 0:
            return raster.reshape(b, d, h, w)
        if i == 1:
            return raster.reshape(b, d, w, h).transpose(2, 3)
        if i == 2:
            return torch.rot90(raster.reshape(b, d, w, h), 3, dims=(2, 3))
        return torch.rot90(raster.reshape(b, d, h, w).transpose(2, 3), 3, dims=(2, 3))

    def forward(self, x):
        b, h, w, _ = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = F.silu(self.conv2d(x.permute(0, 3, 1, 2)))
        half, L = self.k // 2, h * w
        xs = torch.stack([self.view(x, i) for i in range(half)], 1)
        xs = torch.cat([xs, xs.flip(-1)], 1)  # (b, K, d, L): the views forward, then each reversed
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)
        dts, Bs, Cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)
        y = selective_scan(xs.reshape(b, -1, L), dts.reshape(b, -1, L), -torch.exp(self.A_logs), Bs, Cs, self.Ds,
                           self.dt_projs_bias.reshape(-1)).reshape(b, self.k, -1, L)
        total = sum(self.unview(y[:, j] if j < half else y[:, j].flip(-1), j % half, h, w) for j in range(self.k))
        return self.out_proj(self.out_norm(total.permute(0, 2, 3, 1)) * F.silu(z))


def conv_in_silu(c, k, groups=1, bias=True):
    return nn.Sequential(nn.Conv2d(c, c, k, padding=k // 2, groups=groups, bias=bias), nn.InstanceNorm2d(c), nn.SiLU())


class HSSBlock(nn.Module):
    def __init__(self, dim, size):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = TorchSS2D(dim, size)

    def forward(self, x):
        return x + self.self_attention(self.ln_1(x))


class LSSModule(nn.Module):
    def __init__(self, dim, depth, size, kernels=(5, 7)):
        super().__init__()
        self.kernels = kernels
        self.smm_blocks = nn.ModuleList([HSSBlock(dim, size) for _ in range(depth)])
        for k in kernels:
            setattr(self, f"conv1b{k}", conv_in_silu(dim, 1))
            setattr(self, f"conv{k}{k}", conv_in_silu(dim, k, groups=dim, bias=False))
            setattr(self, f"conv1a{k}", conv_in_silu(dim, 1))
        self.finalconv11 = nn.Conv2d(dim * (1 + len(kernels)), dim, 1)

    def forward(self, x):
        ssm = x
        for block in self.smm_blocks:
            ssm = block(ssm)
        xc = x.permute(0, 3, 1, 2)
        local = [getattr(self, f"conv1a{k}")(getattr(self, f"conv{k}{k}")(getattr(self, f"conv1b{k}")(xc)))
                 for k in self.kernels]
        out = self.finalconv11(torch.cat([ssm.permute(0, 3, 1, 2), *local], 1))
        return out.permute(0, 2, 3, 1) + x


class PatchExpand(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.expand = nn.Linear(2 * dim, 4 * dim, bias=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        b, h, w, _ = x.shape
        x = self.expand(x).reshape(b, h, w, 2, 2, -1).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, -1)
        return self.norm(x)


class LSSLayerUp(nn.Module):
    def __init__(self, dim, depth, size, upsample, kernels):
        super().__init__()
        per = 3 if depth % 3 == 0 else 2
        self.blocks = nn.ModuleList([LSSModule(dim, per, size, kernels) for _ in range(depth // per)])
        self.upsample = PatchExpand(dim) if upsample else None

    def forward(self, x):
        if self.upsample is not None:
            x = self.upsample(x)
        for block in self.blocks:
            x = block(x)
        return x


class MambaUPNet(nn.Module):
    def __init__(self, dims=(512, 256, 128, 64), depths=(3, 4, 6, 3), base_size=8, kernels=(5, 7)):
        super().__init__()
        self.layers_up = nn.ModuleList([LSSLayerUp(d, n, base_size * 2 ** i, i > 0, kernels)
                                        for i, (d, n) in enumerate(zip(dims, depths))])

    def forward(self, x):
        x = x.permute(0, 2, 3, 1)
        outs = []
        for i, layer in enumerate(self.layers_up):
            x = layer(x)
            if i:
                outs.insert(0, x.permute(0, 3, 1, 2))
        return outs


class MFFOCE(nn.Module):
    def __init__(self, channels=(64, 128, 256), out_dim=512):
        super().__init__()
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(c1, c2, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c2)
        self.conv2 = nn.Conv2d(c2, c3, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c3)
        self.conv21 = nn.Conv2d(c2, c2, 1)
        self.bn21 = nn.BatchNorm2d(c2)
        self.conv31 = nn.Conv2d(c3, c3, 1)
        self.bn31 = nn.BatchNorm2d(c3)
        self.convf = nn.Conv2d(c3, c3, 1)
        self.bnf = nn.BatchNorm2d(c3)
        planes = out_dim // 4
        self.bn_layer = nn.Sequential(TorchBlock("bottleneck", c3, planes, 2, 64),
                                      TorchBlock("bottleneck", out_dim, planes, 1, 64),
                                      TorchBlock("bottleneck", out_dim, planes, 1, 64))

    def forward(self, x):
        fpn0 = F.relu(self.bn1(self.conv1(x[0])))
        fpn1 = F.relu(self.bn21(self.conv21(x[1]))) + fpn0
        v = F.relu(self.bn2(self.conv2(fpn1))) + F.relu(self.bn31(self.conv31(x[2])))
        return self.bn_layer(F.relu(self.bnf(self.convf(v))))


class TorchMambaAD(nn.Module):
    def __init__(self, encoder=("basic", (3, 4, 6, 3)), depths=(3, 4, 6, 3), base_size=8, kernels=(5, 7)):
        super().__init__()
        self.net_t = TorchResNet(encoder[0], encoder[1], num_stages=3)
        self.mff_oce = MFFOCE()
        self.net_s = MambaUPNet(depths=depths, base_size=base_size, kernels=kernels)

    def forward(self, images):
        feats = self.net_t(images)
        return feats, self.net_s(self.mff_oce(feats))


def anomaly_map(feats_t, feats_s, out_size, sigma=4.0):
    """ADer's ``cal_anomaly_map`` ('add', gaussian_sigma): NumPy/SciPy on the torch features."""
    from scipy.ndimage import gaussian_filter

    total = 0
    for ft, fs in zip(feats_t, feats_s):
        a = 1 - F.cosine_similarity(ft, fs, dim=1)
        total = total + F.interpolate(a[:, None], size=out_size, mode="bilinear", align_corners=True)[:, 0]
    maps = (total / (len(feats_t) * len(feats_t))).detach().cpu().numpy()
    return np.stack([gaussian_filter(m, sigma=sigma) for m in maps])


def randomize(model, seed=0):
    """Random weights everywhere and random BatchNorm statistics, so no layer is an identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "index_flat" in name:
                continue
            if name.endswith(("A_logs", "Ds", "dt_projs_bias")):
                p.add_(0.05 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / math.sqrt(max(p[0].numel(), 1))))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(1.0 + 0.2 * torch.rand(m.running_var.shape, generator=gen))
            if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
                m.weight.add_(1.0)
    return model.eval()
