"""CIFAR-style ResNets (He et al., 2016): ResNet-20 / 56 with BatchNorm and projection shortcuts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax

from xaijax.models.common import (
    LayerKwargs,
    LayerSpec,
    check_layer_names,
    conv_extra_kwargs,
    layer_extra_kwargs,
    resolve_width,
)


class ResNet(nn.Module):
    """Stem conv, three stages of basic blocks (3x3 conv-bn-relu-conv-bn + shortcut), avg-pool, fc.

    Blocks are ``stage{s}_block{b}``; their layers ``..._conv1``, ``..._conv2`` and, where the shape
    changes, a 1x1 projection ``..._shortcut``. Every layer is followed by a BatchNorm named
    ``<layer>_bn``. Residual additions tie the output channels of the stem (stage 1), the shortcut
    (first block of later stages) and every ``..._conv2`` of a stage: they form ``tied_group``
    ``stage{s}`` and share one width.
    """

    blocks_per_stage: int = 3
    stage_widths: Sequence[int] = (16, 32, 64)
    num_classes: int = 10
    widths: Mapping[str, int] | None = None
    layer_kwargs: LayerKwargs | None = None

    def _stage_root(self, stage: int) -> str:
        """The layer that opens a stage's residual stream (the one its width is read from)."""
        return "conv1" if stage == 1 else f"stage{stage}_block1_shortcut"

    def _has_shortcut(self, stage: int, block: int) -> bool:
        return stage > 1 and block == 1

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        n_stages = len(self.stage_widths)

        def stream_consumers(stage: int) -> tuple[str, ...]:
            first_reader = (
                1 if stage == 1 else 2
            )  # Block 1 of a later stage reads the previous stream.
            readers = [
                f"stage{stage}_block{b}_conv1"
                for b in range(first_reader, self.blocks_per_stage + 1)
            ]
            if stage < n_stages:
                readers += [f"stage{stage + 1}_block1_conv1", f"stage{stage + 1}_block1_shortcut"]
            else:
                readers.append("fc")
            return tuple(readers)

        specs = [LayerSpec("conv1", "conv", "conv1_bn", stream_consumers(1), "stage1", False)]
        for s in range(1, n_stages + 1):
            for b in range(1, self.blocks_per_stage + 1):
                prefix = f"stage{s}_block{b}"
                specs.append(
                    LayerSpec(
                        f"{prefix}_conv1",
                        "conv",
                        f"{prefix}_conv1_bn",
                        (f"{prefix}_conv2",),
                        None,
                        False,
                    )
                )
                if self._has_shortcut(s, b):
                    specs.append(
                        LayerSpec(
                            f"{prefix}_shortcut",
                            "conv",
                            f"{prefix}_shortcut_bn",
                            stream_consumers(s),
                            f"stage{s}",
                            False,
                        )
                    )
                specs.append(
                    LayerSpec(
                        f"{prefix}_conv2",
                        "conv",
                        f"{prefix}_conv2_bn",
                        stream_consumers(s),
                        f"stage{s}",
                        False,
                    )
                )
        specs.append(LayerSpec("fc", "dense", None, (), None, True))
        return tuple(specs)

    def _stage_width(self, stage: int) -> int:
        """One width per residual stream; each tied layer named in ``widths`` must agree."""
        default = int(self.stage_widths[stage - 1])
        width = resolve_width(self.widths, self._stage_root(stage), default)
        for spec in self.layer_specs():
            if spec.tied_group == f"stage{stage}":
                given = resolve_width(self.widths, spec.name, width)
                if given != width:
                    raise ValueError(
                        f"widths[{spec.name!r}] = {given} but layers tied by residual additions in "
                        f"stage{stage} must share one width ({width})"
                    )
        return width

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        names = tuple(spec.name for spec in self.layer_specs())
        check_layer_names(self.widths, names[:-1], "widths")
        check_layer_names(self.layer_kwargs, names, "layer_kwargs")

        def conv_bn(name: str, features: int, kernel: int, stride: int, inputs: jax.Array):
            extra = conv_extra_kwargs(self.layer_kwargs, name)
            y = nn.Conv(
                features,
                (kernel, kernel),
                strides=(stride, stride),
                use_bias=True,
                name=name,
                **extra,
            )(inputs)
            return nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f"{name}_bn")(y)

        x = nn.relu(conv_bn("conv1", self._stage_width(1), 3, 1, x))
        for s in range(1, len(self.stage_widths) + 1):
            stream = self._stage_width(s)
            for b in range(1, self.blocks_per_stage + 1):
                prefix = f"stage{s}_block{b}"
                stride = 2 if self._has_shortcut(s, b) else 1
                inner = resolve_width(self.widths, f"{prefix}_conv1", int(self.stage_widths[s - 1]))
                y = nn.relu(conv_bn(f"{prefix}_conv1", inner, 3, stride, x))
                y = conv_bn(f"{prefix}_conv2", stream, 3, 1, y)
                if self._has_shortcut(s, b):
                    x = conv_bn(f"{prefix}_shortcut", stream, 1, stride, x)
                x = nn.relu(x + y)
        x = x.mean(axis=(1, 2))
        extra = layer_extra_kwargs(self.layer_kwargs, "fc")
        return nn.Dense(self.num_classes, name="fc", **extra)(x)
