"""xaijax.lrp against Captum 0.9.0's LRP on LeNet-5, the same weights on both sides.

    python scripts/crosscheck_lrp_captum.py [--examples 64] [--variables runs/.../variables]

The xaijax ``LeNet5`` (random variables drawn by ``--seed``, or trained ones from
``--variables``) is copied into an equivalent PyTorch module (kernels HWIO -> OIHW; fc1's rows
permuted from Flax's HWC flattening to PyTorch's CHW). Both explain the label logit of the first
``--examples`` Fashion-MNIST test images with the epsilon rule on every Conv / Linear layer
(Captum's ``EpsilonRule``, its default; max pooling passes relevance to each window's maximum,
ReLU passes it unchanged), for several epsilons. Prints, per epsilon, the largest absolute
difference of the input relevances relative to the largest relevance, and the conservation
errors of both. Captum needs every ReLU as its own module and no ``nn.Flatten`` module (the
``view`` is done in ``forward``); a ``nn.Sequential`` LeNet-5 with ``nn.Flatten`` stops with
"Module type Flatten is not supported".

Captum and PyTorch are optional, benchmark-only dependencies: ``pip install -e '.[crosscheck]'``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from xaijax import checkpoint, data, lrp, models


def torch_lenet5(torch: Any) -> Any:
    """``xaijax.models.LeNet5`` in PyTorch, written the way Captum's LRP accepts it."""
    nn = torch.nn

    class LeNet5(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.relu1, self.pool1 = (
                nn.Conv2d(1, 6, 5, padding=2),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )
            self.conv2, self.relu2, self.pool2 = nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)
            self.fc1, self.relu3 = nn.Linear(400, 120), nn.ReLU()
            self.fc2, self.relu4 = nn.Linear(120, 84), nn.ReLU()
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x: Any) -> Any:
            x = self.pool1(self.relu1(self.conv1(x)))
            x = self.pool2(self.relu2(self.conv2(x)))
            x = x.reshape(x.shape[0], -1)
            return self.fc3(self.relu4(self.fc2(self.relu3(self.fc1(x)))))

    return LeNet5()  # fmt: skip


def copy_weights(torch: Any, module: Any, params: dict) -> None:
    """Set ``module``'s weights to the Flax ``params`` of ``LeNet5``."""

    def tensor(array: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(np.asarray(array, np.float32)))

    with torch.no_grad():
        for name in ("conv1", "conv2"):
            getattr(module, name).weight.copy_(
                tensor(np.transpose(params[name]["kernel"], (3, 2, 0, 1)))
            )
            getattr(module, name).bias.copy_(tensor(params[name]["bias"]))
        # Flax flattens [5, 5, 16] (HWC); PyTorch [16, 5, 5] (CHW).
        fc1 = np.asarray(params["fc1"]["kernel"]).reshape(5, 5, 16, 120).transpose(2, 0, 1, 3)
        module.fc1.weight.copy_(tensor(fc1.reshape(400, 120).T))
        module.fc1.bias.copy_(tensor(params["fc1"]["bias"]))
        for name in ("fc2", "fc3"):
            getattr(module, name).weight.copy_(tensor(np.asarray(params[name]["kernel"]).T))
            getattr(module, name).bias.copy_(tensor(params[name]["bias"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variables", default=None, help="trained LeNet5 variables (orbax dir)")
    parser.add_argument("--epsilons", default="1e-9,0.01,0.25")
    parser.add_argument(
        "--jitter", type=float, default=0.0, help="add N(0, jitter^2) noise (breaks pooling ties)"
    )
    args = parser.parse_args()
    try:
        import torch
        from captum.attr import LRP
        from captum.attr._utils.lrp_rules import EpsilonRule
    except ImportError:
        sys.exit("needs PyTorch and Captum: pip install -e '.[crosscheck]'")
    torch.set_default_dtype(torch.float64)

    test = data.load_fashion_mnist("test")
    images, labels = test.images[: args.examples], test.labels[: args.examples]
    noise = np.random.default_rng(args.seed).normal(size=images.shape)
    images = images.astype(np.float64) + args.jitter * noise
    model = models.LeNet5()
    if args.variables:
        variables = checkpoint.restore_variables(args.variables)
    else:
        variables = model.init(jax.random.key(args.seed), jnp.zeros((1, *images.shape[1:])))
    variables = jax.tree.map(lambda v: np.asarray(v, np.float64), jax.device_get(variables))
    module = torch_lenet5(torch).double()
    copy_weights(torch, module, variables["params"])
    module.eval()

    jax.config.update("jax_enable_x64", True)
    x = jnp.asarray(images, jnp.float64)
    x_torch = torch.from_numpy(np.transpose(np.asarray(images, np.float64), (0, 3, 1, 2)).copy())
    logits = np.asarray(model.apply(variables, x))
    logit_gap = np.max(np.abs(logits - module(x_torch).detach().numpy()))
    print(
        f"LeNet-5, {args.examples} test images, float64; logits differ by at most {logit_gap:.2e}"
    )

    def apply(batch: jax.Array) -> jax.Array:
        return model.apply(variables, batch)

    target = torch.from_numpy(labels.astype(np.int64))
    for eps in (float(e) for e in args.epsilons.split(",")):
        ours, delta = lrp.relevance(
            apply, x, target=jnp.asarray(labels), rules=lrp.epsilon(eps), return_delta=True
        )
        ours = np.transpose(np.asarray(ours), (0, 3, 1, 2))
        for layer in (module.conv1, module.conv2, module.fc1, module.fc2, module.fc3):
            layer.rule = EpsilonRule(epsilon=eps)
        theirs, their_delta = LRP(module).attribute(
            x_torch, target=target, return_convergence_delta=True
        )
        theirs = theirs.detach().numpy()
        gap = np.max(np.abs(ours - theirs)) / np.max(np.abs(theirs))
        print(
            f"epsilon {eps:g}: max |R_xaijax - R_captum| / max |R_captum| = {gap:.2e}; "
            f"conservation error (sum R - f(x)[t]): xaijax max {np.max(np.abs(delta)):.2e}, "
            f"captum max {np.max(np.abs(their_delta.detach().numpy())):.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
