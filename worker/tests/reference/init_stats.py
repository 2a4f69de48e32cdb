#!/usr/bin/env python3
"""PyTorch's own initialisation of a model's parameters, as statistics, for worker/tests/init.rs.

Reads {"family": "plain" | "resnet" | "vgg" | "mobilenet_v2", "zero_init_residual": bool,
"params": [{"name", "shape"}]} on stdin. Each parameter's layer is told from its shape and its siblings' (a 4-d weight is a
convolution, a 2-d one a linear layer, a 1-d weight next to running statistics a batch norm), and
initialised the way PyTorch does it for that family:

  plain         nn.Conv2d / nn.Linear / nn.BatchNorm2d defaults (reset_parameters)
  resnet        torchvision: conv kaiming_normal_(fan_out, relu); BN 1 / 0; fc nn.Linear default;
                with zero_init_residual, each block's last BN (bn2 of a basic block, bn3 of a
                bottleneck) starts at weight 0
  vgg           torchvision: conv kaiming_normal_(fan_out, relu), bias 0; BN 1 / 0;
                Linear normal_(0, 0.01), bias 0
  mobilenet_v2  torchvision: conv kaiming_normal_(fan_out), bias 0; BN 1 / 0;
                Linear normal_(0, 0.01), bias 0

Each reference is drawn at least 200,000 times over so that its statistics are exact
enough to judge one draw of the Rust side. Prints [{"name", "mean", "std", "max_abs"}].
"""
import json
import math
import sys

import torch
from torch import nn

SAMPLES = 200_000


def draw(family, leaf, shape, sibling, reps):
    """PyTorch's initialisation of a parameter of `shape` (`sibling`: the shape of its layer's
    weight), drawn `reps` times over by widening the layer along a dimension the scheme does not
    depend on (output channels for fan_in schemes, input channels for fan_out ones)."""
    torchvision = family != "plain"
    if leaf in ("running_mean", "running_var"):
        return getattr(nn.BatchNorm2d(shape[0] * reps), leaf)
    layer = sibling if leaf == "bias" else shape
    if len(layer) == 4:  # a convolution; groups do not change fan_in = shape[1]·k·k
        out, c_in, *k = layer
        if not torchvision:
            conv = nn.Conv2d(c_in, out * reps, tuple(k))
            return conv.weight if leaf == "weight" else conv.bias
        if leaf == "bias":
            return torch.zeros(shape[0] * reps)
        weight = torch.empty([out, c_in * reps, *k])
        if family == "mobilenet_v2":
            nn.init.kaiming_normal_(weight, mode="fan_out")
        else:
            nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
        return weight
    if len(layer) == 2:  # a linear layer
        out, c_in = layer
        if family in ("plain", "resnet"):
            linear = nn.Linear(c_in, out * reps)
            return linear.weight if leaf == "weight" else linear.bias
        if leaf == "bias":
            return torch.zeros(out * reps)
        return nn.init.normal_(torch.empty([out * reps, c_in]), 0, 0.01)
    if len(layer) == 1:  # batch norm
        bn = nn.BatchNorm2d(layer[0] * reps)
        return bn.weight if leaf == "weight" else bn.bias
    raise ValueError(f"no rule for {leaf} of shape {shape}")


def last_bn_of_a_block(name, shapes):
    """Whether `name` is the weight torchvision's zero_init_residual zeroes: bn3 of a bottleneck
    (a block with a bn3), else bn2 of a basic block."""
    parts = name.split(".")
    if len(parts) != 4 or not parts[0].startswith("layer") or parts[3] != "weight":
        return False
    block = ".".join(parts[:2])
    last = "bn3" if f"{block}.bn3.weight" in shapes else "bn2"
    return parts[2] == last


def main():
    request = json.load(sys.stdin)
    family = request["family"]
    zero_init_residual = request.get("zero_init_residual", False)
    shapes = {p["name"]: p["shape"] for p in request["params"]}
    out = []
    torch.manual_seed(0)
    with torch.no_grad():
        for p in request["params"]:
            name, shape = p["name"], p["shape"]
            base, leaf = name.rsplit(".", 1)
            sibling = shapes.get(f"{base}.weight", shape)
            n = math.prod(shape)
            reps = max(1, math.ceil(SAMPLES / n))
            if zero_init_residual and last_bn_of_a_block(name, shapes):
                values = torch.zeros(shape).flatten().double()
            else:
                values = draw(family, leaf, shape, sibling, reps).detach().flatten().double()
            out.append(
                {
                    "name": name,
                    "mean": values.mean().item(),
                    "std": values.std().item() if values.numel() > 1 else 0.0,
                    "max_abs": values.abs().max().item(),
                }
            )
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
