"""Layers: ``Module``/``Parameter`` and the handful of layers the models need.

Modelled on PyTorch's ``torch.nn`` so that weights transfer both ways by name and shape:
``Linear`` weights are (out, in), ``Conv2d`` weights (C_out, C_in, kh, kw), state dicts are plain
``dict[str, np.ndarray]`` with dotted names (``"0.weight"``, ``"features.3.bias"``).
Initialisation follows PyTorch's defaults (uniform ±1/sqrt(fan_in) for weights and biases) and
draws from an explicit ``numpy.random.Generator``.  Notebooks: ``01_autograd_engine`` (the engine
underneath) and ``06_lenet5_mnist`` (the layers in use).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from bbits_ref.autograd import ops
from bbits_ref.autograd.engine import Tensor, _check_float_dtype

__all__ = ["Parameter", "Module", "Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "MaxPool2d",
           "ReLU", "Flatten", "Sequential", "as_generator"]


def as_generator(rng) -> np.random.Generator:
    """Accept a Generator or an integer seed; anything else is an error (randomness is explicit)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng must be a numpy.random.Generator or an int seed; got {rng!r}. "
                    "Pass rng=np.random.default_rng(0) so initialisation is reproducible.")


class Parameter(Tensor):
    """A leaf tensor that a Module owns and an optimizer updates (always requires a gradient)."""

    def __init__(self, data, dtype=None) -> None:
        super().__init__(data, requires_grad=True, dtype=dtype)

    def __repr__(self) -> str:
        return f"Parameter(shape={self.shape}, dtype={self.dtype})"


class Module:
    """Base class: finds its parameters, buffers and sub-modules among its attributes.

    Attributes that are :class:`Parameter` s, :class:`Module` s, or lists of modules are found
    in the order they were set; buffers (running statistics) are registered with
    :meth:`register_buffer`.  ``training`` switches batch-norm statistics, gate sampling and
    straight-through rounding between training and evaluation.
    """

    training: bool = True

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self.training = True

    # -- structure
    def register_buffer(self, name: str, value: np.ndarray) -> None:
        if "_buffers" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}.__init__ must call super().__init__() "
                               "before registering buffers")
        self._buffers[name] = np.asarray(value)

    def __getattr__(self, name: str):
        buffers = self.__dict__.get("_buffers", {})
        if name in buffers:
            return buffers[name]
        raise AttributeError(f"{type(self).__name__!r} has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        buffers = self.__dict__.get("_buffers")
        if buffers is not None and name in buffers and not isinstance(value, (Module, Tensor)):
            buffers[name] = np.asarray(value)
        else:
            object.__setattr__(self, name, value)

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        for name, value in self.__dict__.items():
            if isinstance(value, Module):
                yield name, value
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, Module) for v in value):
                for i, v in enumerate(value):
                    yield f"{name}.{i}" if name != "_layers" else str(i), v

    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, child in self.named_children():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator["Module"]:
        return (m for _, m in self.named_modules())

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        for mname, module in self.named_modules(prefix):
            for name, value in module.__dict__.items():
                if isinstance(value, Parameter):
                    yield (f"{mname}.{name}" if mname else name), value

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
        for mname, module in self.named_modules(prefix):
            for name, value in module.__dict__.get("_buffers", {}).items():
                yield (f"{mname}.{name}" if mname else name), value

    # -- modes
    def train(self, mode: bool = True) -> "Module":
        for m in self.modules():
            m.training = mode
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    def to_dtype(self, dtype) -> "Module":
        """Cast every parameter and floating buffer in place (float64 for gradient checks).

        Build optimizers after this: their state keeps the dtype the parameters had.
        """
        dt = _check_float_dtype(dtype)
        for p in self.parameters():
            p.data = p.data.astype(dt)
            p.grad = None
        for m in self.modules():
            for k, v in m.__dict__.get("_buffers", {}).items():
                if v.dtype.kind == "f":
                    m._buffers[k] = v.astype(dt)
            if isinstance(m.__dict__.get("dtype"), np.dtype):   # e.g. lazily created ranges
                m.dtype = dt
        return self

    # -- state
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, by dotted name (plain arrays, no pickling)."""
        state = {name: p.data.copy() for name, p in self.named_parameters()}
        state.update({name: np.array(b, copy=True) for name, b in self.named_buffers()})
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> None:
        """Copy arrays into parameters and buffers; shapes must match, names too if ``strict``."""
        params = dict(self.named_parameters())
        buffers = {name: (m, key) for mname, m in self.named_modules()
                   for key in m.__dict__.get("_buffers", {})
                   for name in [f"{mname}.{key}" if mname else key]}
        known = set(params) | set(buffers)
        if strict:
            missing = sorted(known - set(state))
            unexpected = sorted(set(state) - known)
            if missing or unexpected:
                raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys "
                               f"{unexpected}. Use strict=False to load a subset.")
        for name, value in state.items():
            value = np.asarray(value)
            if name in params:
                p = params[name]
                if value.shape != p.shape:
                    raise ValueError(f"load_state_dict: {name!r} has shape {value.shape}, the "
                                     f"model expects {p.shape}")
                p.data = value.astype(p.dtype, copy=True)
            elif name in buffers:
                m, key = buffers[name]
                old = m._buffers[key]
                if value.shape != old.shape:
                    raise ValueError(f"load_state_dict: buffer {name!r} has shape {value.shape}, "
                                     f"the model expects {old.shape}")
                m._buffers[key] = value.astype(old.dtype, copy=True)

    # -- calling
    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def extra_repr(self) -> str:
        return ""

    def __repr__(self) -> str:
        children = list(self.named_children())
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not children:
            return head + ")"
        lines = [head] + [f"  ({n}): " + repr(c).replace("\n", "\n  ") for n, c in children]
        return "\n".join(lines) + "\n)"


def _uniform(rng, bound, shape, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """y = x Wᵀ + b with W of shape (out_features, in_features); PyTorch's default init."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, rng,
                 dtype=np.float32) -> None:
        super().__init__()
        rng = as_generator(rng)
        self.in_features, self.out_features = int(in_features), int(out_features)
        bound = 1.0 / np.sqrt(in_features)
        self.weight = Parameter(_uniform(rng, bound, (out_features, in_features), dtype))
        self.bias = Parameter(_uniform(rng, bound, (out_features,), dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}) got input with "
                             f"{x.shape[-1]} features (shape {x.shape})")
        return ops.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """2-D convolution, NCHW, weight (C_out, C_in, kh, kw); PyTorch's default init."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, *, rng, dtype=np.float32) -> None:
        super().__init__()
        rng = as_generator(rng)
        kh, kw = (kernel_size, kernel_size) if np.isscalar(kernel_size) else kernel_size
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = (int(kh), int(kw)), stride, padding
        bound = 1.0 / np.sqrt(in_channels * kh * kw)
        self.weight = Parameter(_uniform(rng, bound, (out_channels, in_channels, kh, kw), dtype))
        self.bias = Parameter(_uniform(rng, bound, (out_channels,), dtype)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        y = ops.conv2d(x, self.weight, stride=self.stride, padding=self.padding)
        if self.bias is not None:
            y = y + ops.reshape(self.bias, shape=(-1, 1, 1))
        return y

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class _BatchNorm(Module):
    """Batch normalisation with running statistics (PyTorch semantics).

    Training: normalise with the batch mean and the *biased* batch variance; update the running
    statistics with momentum, using the *unbiased* variance.  Evaluation: use the running ones.
    """

    _axes: tuple = ()
    _ndim: int = 0

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 dtype=np.float32) -> None:
        super().__init__()
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), float(momentum)
        self.weight = Parameter(np.ones(num_features, dtype=dtype))
        self.bias = Parameter(np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(num_features, dtype=dtype))
        self.register_buffer("running_var", np.ones(num_features, dtype=dtype))
        self.register_buffer("num_batches_tracked", np.zeros((), dtype=np.int64))

    def _shape(self, v):
        return ops.reshape(v, shape=(1, -1) + (1,) * (self._ndim - 2))

    def batch_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Batch mean and biased variance over every axis but the channel axis."""
        mean = ops.mean(x, axis=self._axes, keepdims=True)
        centred = x - mean
        var = ops.mean(centred * centred, axis=self._axes, keepdims=True)
        return mean, var

    def update_running_stats(self, mean: np.ndarray, var_biased: np.ndarray, n: int) -> None:
        unbiased = var_biased * (n / max(n - 1, 1))
        m = self.momentum
        self.running_mean = ((1 - m) * self.running_mean + m * mean).astype(self.running_mean.dtype)
        self.running_var = ((1 - m) * self.running_var + m * unbiased).astype(self.running_var.dtype)
        self.num_batches_tracked = self.num_batches_tracked + 1

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self._ndim or x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) expects input with "
                             f"{self._ndim} dims and {self.num_features} channels on axis 1; "
                             f"got shape {x.shape}")
        if self.training:
            n = x.size // self.num_features
            if n <= 1:
                raise ValueError(f"{type(self).__name__}: training needs more than one value per "
                                 f"channel to estimate batch statistics; got input shape {x.shape}")
            mean, var = self.batch_stats(x)
            self.update_running_stats(mean.data.reshape(-1), var.data.reshape(-1), n)
            inv = (var + self.eps) ** -0.5
            xhat = (x - mean) * inv
        else:
            shape = (1, -1) + (1,) * (self._ndim - 2)
            inv = (1.0 / np.sqrt(self.running_var + self.eps)).reshape(shape)
            xhat = (x - self.running_mean.reshape(shape)) * inv
        return xhat * self._shape(self.weight) + self._shape(self.bias)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


class BatchNorm1d(_BatchNorm):
    """Batch norm over (N, C) inputs."""
    _axes, _ndim = (0,), 2


class BatchNorm2d(_BatchNorm):
    """Batch norm over (N, C, H, W) inputs, one statistic per channel."""
    _axes, _ndim = (0, 2, 3), 4


class MaxPool2d(Module):
    def __init__(self, kernel_size=2, stride=None) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: Tensor) -> Tensor:
        return ops.max_pool2d(x, kernel_size=self.kernel_size, stride=self.stride)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride or self.kernel_size}"


class ReLU(Module):
    def forward(self, x: Tensor) -> Tensor:
        return ops.relu(x)


class Flatten(Module):
    def __init__(self, start_dim: int = 1) -> None:
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x: Tensor) -> Tensor:
        return ops.flatten(x, self.start_dim)


class Sequential(Module):
    """Modules applied in order; parameters are named ``"0.weight"``, ``"1.bias"``, ... as in PyTorch."""

    def __init__(self, *modules: Module) -> None:
        super().__init__()
        for m in modules:
            if not isinstance(m, Module):
                raise TypeError(f"Sequential takes Modules; got {type(m).__name__}")
        self._layers = list(modules)

    def __iter__(self):
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __getitem__(self, i):
        return self._layers[i]

    def forward(self, x):
        for m in self._layers:
            x = m(x)
        return x

