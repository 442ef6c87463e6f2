"""FlowMo: training-free, variance-based guidance toward coherent motion (Shaulov, Hazan, Wolf, Chefer 2025,
"FlowMo: Variance-Based Flow Guidance for Coherent Motion in Video Generation").

At each guided sampling step ``i`` (latent ``x = x_{sigma_i}``, shape ``[B, C, F, H, W]``), before the sampler's own
step, this module computes, with gradients through the transformer:

1. the sampler's prediction of the clean latent, ``x0_hat(x) = x - sigma_i v(x)`` (for the teacher ``v`` is the
   classifier-free-guided velocity, one batched cond + uncond call, exactly as the sampler computes it);
2. the appearance-debiased temporal representation: the absolute differences of consecutive latent frames,
   ``d_f = |x0_hat[:, :, f + 1] - x0_hat[:, :, f]|`` for ``f = 0 .. F - 2`` (the appearance, constant in time,
   cancels);
3. the patch-wise temporal variance: ``var[c, h, w] = Var_f d_f[c, h, w]`` (population variance over the ``F - 1``
   differences, i.e. after removing their mean over time), averaged over channels into a map ``P[h, w]`` with one
   value per latent patch;
4. the coherence signal of each sample, ``L_b = max_{h, w} P`` (``aggregate="mean"``: the mean over patches);
5. a gradient step on the latent, ``x <- x - eta * d(sum_b L_b) / dx`` (``sum_b``: each sample's gradient is its
   own, so a video does not depend on what shares its batch), repeated ``iterations`` times, each with a fresh
   forward and backward pass.

The sampler then takes its normal step from the updated ``x``: the velocity is computed again there, without
gradient. Guided steps are ``start <= i < stop`` (0-based sampler steps; by default the first quarter of the steps,
rounded up). The few-step students are guided the same way at their x0-prediction steps, before re-noising. A video
of fewer than 3 latent frames has no temporal variance to lower: its signal is 0 and the guidance changes nothing
(its passes still run).

Where this deviates from the paper, or fills in what it leaves open:

* a "patch" is one position of the latent grid (the VAE's spatial downsampling), not one of the transformer's
  ``1 x 2 x 2`` token patches;
* the update is plain gradient descent with step size ``eta``; it is not normalised, so useful values of ``eta``
  depend on the model's scale (the authors' released code has also used Adam on the latent);
* the default range (first quarter of the steps) stands in for the paper's choice of the first steps of a 50-step
  schedule, and scales with the step count; the few-step students are an extension (the paper guides multi-step
  samplers only);
* the backward passes are through the plain transformer (no gradient checkpointing): memory grows with the
  activations of one forward pass at full scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

SAMPLERS = ("default", "flowmo")
AGGREGATES = ("max", "mean")
# bounds of the settings (a request outside them is refused, naming the field and the limit)
ETA_MAX = 100.0
ITERATIONS_MAX = 10
DEFAULT_ETA = 0.1  # chosen on the tiny teacher; tune it for other models (the step is not normalised)
DEFAULT_ITERATIONS = 1


class FlowMoError(ValueError):
    """A FlowMo setting outside its bounds: ``field`` (``flowmo_eta``, ...), ``detail`` and the ``limit``."""

    def __init__(self, field: str, detail: str, limit=None):
        self.field, self.detail, self.limit = field, detail, limit
        super().__init__(f"{field}: {detail}")


@dataclass(frozen=True)
class FlowMoConfig:
    """FlowMo's settings: step size ``eta``, guided steps ``start <= i < stop`` (``stop=None``: the first quarter
    of the sampler's steps, rounded up, and at least ``start + 1``), gradient ``iterations`` per guided step."""

    eta: float = DEFAULT_ETA
    start: int = 0
    stop: int | None = None
    iterations: int = DEFAULT_ITERATIONS
    aggregate: str = "max"

    def check(self, num_steps: int | None = None) -> FlowMoConfig:
        """Raise ``FlowMoError`` for a setting out of bounds; ``num_steps``: the sampler's step count, which bounds
        the step range. Returns self."""
        eta = self.eta
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not math.isfinite(eta):
            raise FlowMoError("flowmo_eta", f"must be a finite number in (0, {ETA_MAX:g}] (got {eta!r})", ETA_MAX)
        if eta <= 0:
            raise FlowMoError("flowmo_eta", f"must be > 0 (got {eta:g})", 0)
        if eta > ETA_MAX:
            raise FlowMoError("flowmo_eta", f"must be <= {ETA_MAX:g} (got {eta:g})", ETA_MAX)
        for name, value in (
            ("flowmo_iterations", self.iterations),
            ("flowmo_start", self.start),
            ("flowmo_stop", self.stop),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise FlowMoError(name, f"must be a whole number (got {value!r})")
        if not 1 <= self.iterations <= ITERATIONS_MAX:
            raise FlowMoError(
                "flowmo_iterations",
                f"must be in [1, {ITERATIONS_MAX}] (got {self.iterations})",
                ITERATIONS_MAX if self.iterations > ITERATIONS_MAX else 1,
            )
        if self.start < 0:
            raise FlowMoError("flowmo_start", f"must be >= 0 (got {self.start})", 0)
        if self.stop is not None and self.stop <= self.start:
            raise FlowMoError("flowmo_stop", f"must be > flowmo_start = {self.start} (got {self.stop})", self.start + 1)
        if self.aggregate not in AGGREGATES:
            raise FlowMoError("flowmo_aggregate", f"must be one of {', '.join(AGGREGATES)} (got {self.aggregate!r})")
        if num_steps is not None:
            if self.start >= num_steps:
                raise FlowMoError(
                    "flowmo_start",
                    f"must be < {num_steps}, the sampler's number of steps (got {self.start})",
                    num_steps - 1,
                )
            if self.stop is not None and self.stop > num_steps:
                raise FlowMoError(
                    "flowmo_stop", f"must be <= {num_steps}, the sampler's number of steps (got {self.stop})", num_steps
                )
        return self

    def guided_steps(self, num_steps: int) -> range:
        """The 0-based sampler steps that are guided, of ``num_steps``."""
        stop = self.stop if self.stop is not None else max(math.ceil(num_steps / 4), self.start + 1)
        return range(self.start, min(stop, num_steps))

    def as_dict(self, num_steps: int | None = None) -> dict:
        d = {
            "eta": float(self.eta),
            "start": self.start,
            "stop": self.stop,
            "iterations": self.iterations,
            "aggregate": self.aggregate,
        }
        if num_steps is not None:
            steps = self.guided_steps(num_steps)
            d.update(stop=steps.stop, guided_steps=len(steps))
        return d


def flowmo_from_options(
    sampler: str | None,
    eta: float | None = None,
    start: int | None = None,
    stop: int | None = None,
    iterations: int | None = None,
) -> FlowMoConfig | None:
    """The FlowMo settings a request names (None: the plain sampler); FlowMo options without ``sampler="flowmo"``
    are an error, so that they are never silently ignored."""
    sampler = sampler or "default"
    if sampler not in SAMPLERS:
        raise FlowMoError("sampler", f"must be one of {', '.join(SAMPLERS)} (got {sampler!r})")
    given = {
        k: v
        for k, v in (
            ("flowmo_eta", eta),
            ("flowmo_start", start),
            ("flowmo_stop", stop),
            ("flowmo_iterations", iterations),
        )
        if v is not None
    }
    if sampler != "flowmo":
        if given:
            name = next(iter(given))
            raise FlowMoError(name, "is a FlowMo setting: it needs sampler 'flowmo'")
        return None
    cfg = FlowMoConfig(
        eta=DEFAULT_ETA if eta is None else eta,
        start=0 if start is None else start,
        stop=stop,
        iterations=DEFAULT_ITERATIONS if iterations is None else iterations,
    )
    return cfg.check()


def coherence_signal(x0: torch.Tensor, aggregate: str = "max") -> torch.Tensor:
    """FlowMo's signal of each sample ``[B]`` from predicted clean latents ``[B, C, F, H, W]`` (see the module
    docstring: patch-wise temporal variance of consecutive-frame absolute differences; max or mean over patches).
    A video with fewer than 3 latent frames has no variance over time: 0."""
    if x0.ndim != 5:
        raise ValueError(f"expected latents [B, C, F, H, W], got shape {tuple(x0.shape)}")
    x0 = x0.float()
    if x0.shape[2] < 3:
        return x0.sum(dim=(1, 2, 3, 4)) * 0.0
    d = (x0[:, :, 1:] - x0[:, :, :-1]).abs()  # [B, C, F-1, H, W]
    patch = d.var(dim=2, unbiased=False).mean(dim=1)  # [B, H, W]
    flat = patch.flatten(1)
    return flat.amax(dim=1) if aggregate == "max" else flat.mean(dim=1)


def flowmo_update(
    x: torch.Tensor,
    predict_x0: Callable[[torch.Tensor], torch.Tensor],
    eta: float,
    iterations: int = 1,
    aggregate: str = "max",
) -> torch.Tensor:
    """FlowMo's guidance at one step: ``iterations`` gradient steps ``x <- x - eta grad_x sum_b L_b(x0_hat(x))``.

    ``predict_x0(x)``: the sampler's clean-latent prediction at this step, differentiable in ``x`` (each call is
    one forward pass; the gradient one backward pass). Gradients are taken with respect to ``x`` only (nothing
    accumulates in the network's parameters). Returns the updated latent, detached.
    """
    import torch  # here, not at the top: the CLI reads the settings and bounds above without loading torch

    x = x.detach()
    for _ in range(int(iterations)):
        with torch.enable_grad():
            z = x.clone().requires_grad_(True)
            loss = coherence_signal(predict_x0(z), aggregate).sum()
            (grad,) = torch.autograd.grad(loss, z)
        x = (x - float(eta) * grad.to(x.dtype)).detach()
    return x


class PassCounter:
    """Forward calls of a module, and backward passes through the outputs of the calls made with gradient."""

    def __init__(self, module: torch.nn.Module):
        self.forward = self.backward = 0
        self.handle = module.register_forward_hook(self._on_forward)

    def _on_forward(self, _module, _args, output):
        self.forward += 1
        out = output[0] if isinstance(output, tuple) else output.sample
        if out.requires_grad:
            out.register_hook(self._on_backward)

    def _on_backward(self, _grad):
        self.backward += 1

    def close(self) -> None:
        self.handle.remove()


def flowmo_passes(num_steps: int, flowmo: FlowMoConfig | None, cfg_pairs: bool) -> dict:
    """Extra work FlowMo adds to one video: forward passes with gradient (network evaluations: a CFG call counts
    two) and backward passes, over its guided steps."""
    if flowmo is None:
        return {"guided_steps": 0, "forward_evaluations": 0, "backward_evaluations": 0}
    n = len(flowmo.guided_steps(num_steps)) * flowmo.iterations
    per = 2 if cfg_pairs else 1
    return {
        "guided_steps": len(flowmo.guided_steps(num_steps)),
        "forward_evaluations": n * per,
        "backward_evaluations": n * per,
    }
