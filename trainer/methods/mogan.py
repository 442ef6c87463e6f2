"""MoGAN: an optical-flow motion discriminator plus DMD regularisation (the paper of record).

Per iteration, in the paper's order:
1. generator update with ``L_DMD``                               (skipped by the "no DMD" ablation)
2. ``critic_steps`` fake-score updates                            (skipped by the "no DMD" ablation)
3. generator update with ``lambda_1 * L_G``, ``L_G = softplus(-D(o_gen))``
4. discriminator update with ``lambda_2 * L_D + lambda_R1 * R1 + lambda_R2 * R2``,
   ``L_D = softplus(-D(o_real)) + softplus(D(o_gen))``, R1/R2 = ``||D(o) - D(o + sigma_n n)||^2``.

``o`` is the motion tensor of a decoded **window** of L of the K latent chunks (truncated BPTT through the Wan
VAE decoder, ``trainer/models/vae_window.py``): flow from a frozen differentiable estimator, last flow duplicated,
magnitude appended. Real clips of the real-motion set take the same frame window through the same path.
Ablations: ``use_dmd=false``, ``use_r1r2=false``, ``disc_space="video"`` (D reads the window's latents).

R1/R2 perturb D's input in the units D computes with: ``sigma_n`` is a standard deviation of the normalised flow
(pixel flow divided by ``flow_norm * min(H, W)``, which D does before encoding it) in flow space, of the normalised
latents in video space (``trainer/losses/gan.py``). The discriminator update runs D in float32 with autocast off
(both ablation arms alike), so the penalty's difference of two logits is not bf16 rounding; it costs that update
float32 instead of bf16 D passes on GPU. Under ``parallel=fsdp`` with bf16 on CUDA, FSDP gathers D's weights in
bf16, so there D keeps the run's autocast. Each step logs ``disc/r1``, ``disc/r2``, ``disc/l_d`` and
``disc/r1r2_grad_ratio``, the gradient norm ``lambda_R1 R1 + lambda_R2 R2`` puts on D's parameters over that of
``lambda_2 L_D`` (not under fsdp, whose gradient hooks run once per backward of a sharded network).

Each discriminator update sees as many generated motions as real ones (``disc_batch_size``): they are generated
fresh, without gradient, in generator micro-batches of prompts, at the cost of ``ceil(disc / generator micro
batch)`` no-grad generator samples and window decodes per discriminator micro-step.

Random draws come from per-purpose streams (``trainer/random_streams.py``), and phases 1-2 take their prompts from
a prompt stream of their own: switching ``use_dmd``, ``use_r1r2`` or ``disc_space`` leaves every draw it does not
own (windows, prompts, generator noise and step indices, DMD's sigmas and noise) exactly as it was.

    motionlab train mogan --preset tiny --init tiny-dmd --teacher tiny-teacher
"""

from __future__ import annotations

import contextlib

import torch

from trainer import parallel
from trainer.config import ConfigError, MoGANConfig, micro_batch
from trainer.data.streams import IndexStream, load_clips
from trainer.flow import build_flow_estimator
from trainer.losses.gan import discriminator_objective, flow_tensor, g_loss
from trainer.methods.dmd import DMD, require_student_init
from trainer.models.discriminators import MotionDiscriminator
from trainer.models.vae_window import decode_window, window_frame_range
from trainer.random_streams import RandomStreams

DISC_PROMPT = "a video with good motion"
RAFT_FILE = "raft/raft_large_C_T_SKHT_V2-ff5fadd5.pth"  # torchvision's RAFT-large state dict, under the weights dir


def preflight(cfg) -> None:
    """Check every file a run needs before loading anything; one error names all that is missing."""
    from trainer.models.generator import (
        FULL_MODEL_SUBDIR,
        WeightsNotFoundError,
        check_pipeline_dir,
        weights_dir,
    )
    from trainer.zoo import resolve_checkpoint

    require_student_init(cfg, "MoGAN")
    m = cfg.method_cfg
    if cfg.preset == "full":
        cfg.teacher = cfg.teacher or str(weights_dir() / FULL_MODEL_SUBDIR)
        if m.flow_estimator.startswith("raft") and not m.flow_weights:
            m.flow_weights = str(weights_dir() / RAFT_FILE)
    problems = []
    for field_name, ref in (("teacher", cfg.teacher), ("init", cfg.init)):
        if ref:
            try:
                check_pipeline_dir(resolve_checkpoint(ref))
            except FileNotFoundError as exc:
                problems.append(f"{field_name}: {exc}")
    if m.disc_space == "flow" and m.flow_estimator.startswith("raft"):
        from pathlib import Path

        if not m.flow_weights or not Path(m.flow_weights).is_file():
            problems.append(
                f"method_cfg.flow_weights: RAFT weights file {m.flow_weights or '(not set)'} not found "
                f"(expected torchvision's {m.flow_estimator} state dict, e.g. $MOTIONLAB_WEIGHTS_DIR/"
                f"{RAFT_FILE})"
            )
    if problems:
        raise WeightsNotFoundError("cannot start the run; missing:\n  - " + "\n  - ".join(problems))


class MoGAN(DMD):
    name = "mogan"
    Config = MoGANConfig

    def __init__(self, cfg, device, dtype):
        preflight(cfg)
        super().__init__(cfg, device, dtype)
        m = self.mcfg
        k = self.latent_shape[1]
        if m.window_chunks > k:
            raise ValueError(
                f"config field 'method_cfg.window_chunks': {m.window_chunks} exceeds the K={k} "
                f"latent chunks of a {cfg.data.num_frames}-frame video"
            )
        if len(m.head_blocks) != 3:
            raise ValueError("config field 'method_cfg.head_blocks': exactly three block indices are needed")
        if m.disc_space == "flow":  # frozen; replicated on every rank under fsdp too (small next to the DiTs)
            self.flow = build_flow_estimator(m.flow_estimator, weights_path=m.flow_weights, device=device)
        prompt = self.gen.encode_prompts([DISC_PROMPT])[0]
        self.disc = MotionDiscriminator.from_transformer(
            self.teacher,
            num_blocks=m.disc_blocks,
            head_blocks=tuple(m.head_blocks),
            prompt_embeds=prompt,
            input_kind="flow" if m.disc_space == "flow" else "latent",
            flow_encoder=m.flow_encoder,
        ).to(device)
        self.disc.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.disc.enable_gradient_checkpointing()
        self.networks["disc"] = self.disc
        self.learning_rates["disc"] = m.disc_lr or cfg.optim.lr
        if not m.use_dmd:  # the ablation trains no fake score: don't carry an optimizer for it
            del self.networks["fake_score"]

    def setup_data(self, rank, world_size):
        super().setup_data(rank, world_size)
        d, m = self.cfg.data, self.mcfg
        self.streams = RandomStreams(self.cfg.seed, rank)
        # phases 1-2 read prompts from their own stream: with use_dmd off, phases 3-4 still get the same prompts
        self.dmd_prompts = (
            self.shards.reader("prompts", ("text",), d.seed + 3, rank, world_size)
            if self.shards is not None
            else IndexStream(self.prompts.n, d.seed + 3, rank, world_size)
        )
        if self.shards is not None:  # the real set is the shards' clips: their flow (or latents), computed once
            self.real = None
            self.real_stream = self.shards.reader("clips", (self._real_field(),), d.seed + 2, rank, world_size)
            return
        if d.source == "synthetic":
            families = d.families if m.real_families is None else m.real_families
            real_cfg = d.model_copy(update={"num_videos": m.num_real, "seed": d.seed + 2, "families": families})
        else:
            real_cfg = d
        clips, _ = load_clips(real_cfg)
        self.real = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).contiguous()  # uint8 [N, 3, T, H, W]
        self.real_stream = IndexStream(len(self.real), d.seed + 2, rank, world_size)

    def _real_field(self) -> str:
        """The stored field of the real clips the discriminator reads, checked against this run's config."""
        m, shards = self.mcfg, self.shards
        if m.disc_space == "video":
            shards.check_against(self.gen, self.cfg.data, latents=True)
            return "latents"
        shards.require(
            "clips", ("flow",), f"MoGAN reads the real clips' optical flow: preprocess with --flow {m.flow_estimator}"
        )
        stored = shards.index["flow"]["estimator"]
        if stored != m.flow_estimator:
            raise ConfigError(
                "method_cfg.flow_estimator",
                f"{m.flow_estimator!r}, but the real flow in {shards.index_path} was computed by {stored!r}",
            )
        return "flow"

    def set_layout(self, world_size):
        super().set_layout(world_size)
        n = self.mcfg.disc_batch_size  # global, like batch_size (None: the generator's batch)
        self.disc_micro_batch = (
            self.micro_batch
            if n is None
            else micro_batch(n, world_size, self.cfg.grad_accum, "method_cfg.disc_batch_size")
        )

    def layout(self):
        return {**super().layout(), "disc_micro_batch_size": self.disc_micro_batch}

    # -- the motion representation -------------------------------------------------------------------------
    def encode_for_disc(self, x):
        return self.gen.encode_video(x)

    def window(self, draws: torch.Generator | None = None) -> int:
        """The first latent chunk of a window, uniform over the K - L + 1 starts (from ``draws``)."""
        k = self.latent_shape[1]
        return int(torch.randint(0, k - self.mcfg.window_chunks + 1, (1,), generator=draws))

    def motion_of_latents(self, x0: torch.Tensor, start: int) -> torch.Tensor:
        """Generated latents -> what D reads: the window's flow tensor (or, video space, its latents)."""
        if self.mcfg.disc_space == "video":
            return x0[:, :, start : start + self.mcfg.window_chunks]
        # Checkpointing the window's chunks trades a second decoder pass in backward for memory: on at full scale
        # (cfg.gradient_checkpointing), off at tiny scale where activations are small and time is what runs out.
        pixels, _ = decode_window(
            self.gen.vae, x0, start, self.mcfg.window_chunks, checkpoint=self.cfg.gradient_checkpointing
        )
        return self.flow_motion(pixels)

    def flow_motion(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels ``[B, 3, T, H, W]`` -> motion tensor ``[B, T', 3, H, W]`` with ``T' = 1 + 4k`` frames.

        A window that does not start at chunk 0 decodes 4L frames; the VAE that encodes the flow "like a video"
        needs 1 + 4k, so the last frames are dropped (the same for real and generated clips).
        """
        keep = self.kept_frames(pixels.shape[2])
        return flow_tensor(self.flow(pixels[:, :, :keep].permute(0, 2, 1, 3, 4)))

    def kept_frames(self, n: int) -> int:
        """Frames of an ``n``-frame window that ``flow_motion`` keeps: ``1 + 4k``."""
        r = 2 ** sum(self.gen.vae.config.temperal_downsample)
        return 1 + (n - 1) // r * r

    @torch.no_grad()
    def motion_of_real(self, n: int, start: int) -> torch.Tensor:
        f0, f1 = window_frame_range(self.gen.vae, start, self.mcfg.window_chunks)
        if self.real is None:  # from shards: the window's slice of the stored latents, or of the whole clip's flow
            batch = self.real_stream.next(n)
            if self.mcfg.disc_space == "video":
                return batch["latents"][:, :, start : start + self.mcfg.window_chunks].float().to(self.device)
            keep = self.kept_frames(f1 - f0)
            return flow_tensor(batch["flow"][:, f0 : f0 + keep - 1].float().to(self.device))
        x = self.real[self.real_stream.next(n)].float().to(self.device) / 127.5 - 1
        if self.mcfg.disc_space == "video":
            return self.gen.encode_video(x)[:, :, start : start + self.mcfg.window_chunks]
        return self.flow_motion(x[:, :, f0:f1])

    def d(self, net, o):
        return net(o, encode=self.encode_for_disc) if self.mcfg.disc_space == "flow" else net(o)

    def disc_input_scale(self, o: torch.Tensor) -> float:
        """What D divides its input by before anything else: ``flow_norm * min(H, W)`` for a flow tensor, 1 for
        latents. R1/R2 scale their noise by it, so ``sigma_n`` is in the units of the normalised flow."""
        if self.mcfg.disc_space != "flow":
            return 1.0
        return float(self.disc.config["flow_norm"] * min(o.shape[-2:]))

    def disc_in_float32(self) -> bool:
        """Whether the discriminator update can run D in float32: not where FSDP computes with D's weights gathered
        in a lower precision (fsdp with bf16 on CUDA); there autocast stays as the run sets it."""
        if not self.sharded:
            return True
        policy = parallel.mixed_precision_policy(self.cfg.mixed_precision, self.device)
        return policy.param_dtype in (None, torch.float32)

    def r1r2_noise_generator(self) -> torch.Generator:
        """The R1/R2 noise's generator for one discriminator micro-step, on the device: seeded from the ``r1r2``
        stream (the noise is as large as D's input, so it is drawn where D runs, not on the CPU and copied)."""
        seed = self.random_stream("r1r2").initial_seed()
        return torch.Generator(device=self.device).manual_seed(seed)

    @torch.no_grad()
    def generated_motion(self, n: int, start: int, draws: torch.Generator | None) -> torch.Tensor:
        """``n`` generated motions of the window at ``start``, without gradient: generator micro-batches of prompts
        (``next_cond``) until there are ``n``, the last one cut to what is missing."""
        parts, have = [], 0
        while have < n:
            cond = self.next_cond()[: n - have]
            x0 = self.generator_sample(self.generator, cond, grad=False, rng=draws)
            parts.append(self.motion_of_latents(x0, start))
            have += parts[-1].shape[0]
        return torch.cat(parts)

    # -- phases 3 and 4 --------------------------------------------------------------------------------------
    def generator_gan_update(self, ctx):
        def loss_fn():
            draws = self.random_stream("generator_gan")
            cond = self.next_cond()
            x0_hat = self.generator_sample(ctx.net("generator"), cond, grad=True, rng=draws)
            logits = self.d(self.disc, self.motion_of_latents(x0_hat, self.window(draws)))
            return self.mcfg.lambda_gan * g_loss(logits), {"d_fake": logits.mean().detach()}

        return ctx.update("generator", loss_fn)

    def disc_update(self, ctx):
        m = self.mcfg

        def loss_fn():
            draws = self.random_stream("disc")
            n = self.disc_micro_batch
            start = self.window(draws)
            o_real = self.motion_of_real(n, start)
            o_gen = self.generated_motion(n, start, draws)
            disc = ctx.net("disc")
            # The gradient-norm ratio differentiates L_D and R1 + R2 separately: one more backward pass over
            # L_D's part of the graph (the clean D passes) than a plain backward, and up to two gradient-sized
            # buffers besides D's .grad. Not under fsdp, whose hooks reduce a sharded network's gradients once per
            # backward pass.
            params = [p for p in self.disc.parameters() if p.requires_grad] if not self.sharded else None
            return discriminator_objective(
                lambda o: self.d(disc, o),
                o_real,
                o_gen,
                lambda_d=m.lambda_disc,
                lambda_r1=m.lambda_r1,
                lambda_r2=m.lambda_r2,
                sigma_n=m.sigma_n,
                r1r2=m.use_r1r2,
                input_scale=self.disc_input_scale(o_real),
                generator=self.r1r2_noise_generator() if m.use_r1r2 else None,
                float32=self.disc_in_float32(),
                params=params,
            )

        return ctx.update("disc", loss_fn)

    @contextlib.contextmanager
    def dmd_phase_prompts(self):
        """Within the block, ``next_cond`` (DMD's, reading ``self.prompts``) reads phases 1-2's prompt stream."""
        self.prompts, self.dmd_prompts = self.dmd_prompts, self.prompts
        try:
            yield
        finally:
            self.prompts, self.dmd_prompts = self.dmd_prompts, self.prompts

    def train_step(self, step, ctx):
        logs = {}
        if self.mcfg.use_dmd:
            with self.dmd_phase_prompts():
                logs.update(self.generator_dmd_update(ctx))
                logs.update(self.critic_updates(ctx))
        gan = self.generator_gan_update(ctx)
        logs.update({k.replace("generator/", "generator_gan/"): v for k, v in gan.items()})
        logs.update(self.disc_update(ctx))
        return logs

    def state_dict(self):
        return {
            **super().state_dict(),
            "real": self.real_stream.state_dict(),
            "dmd_prompts": self.dmd_prompts.state_dict(),
            "streams": self.streams.state_dict(),
        }

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.real_stream.load_state_dict(state["real"])
        self.dmd_prompts.load_state_dict(state["dmd_prompts"])
        self.streams.load_state_dict(state["streams"])
