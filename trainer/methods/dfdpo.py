"""DF-DPO: discriminator-free video DPO -- real clips are the "win", distorted copies of them the "lose".

Networks: the policy (trainable transformer, initialised from the ``init`` checkpoint -- a teacher or a
few-step student) and a frozen reference copy of it. Per optimizer micro-batch:

1. win: real clips, their VAE latents cached once per run (as ``sft.LatentData`` does, same cache file);
   lose: each win clip edited by the distortion in force at this step (``trainer/data/distortions.py``) and
   VAE-encoded on the fly. The edit's randomness comes from a numpy RNG seeded by ``(seed, data.seed,
   position)``, ``position`` the sample's index in the global data order (``IndexStream``): the RNG's state
   is the stream position saved in ``state_dict``, so a resumed run draws exactly the same edits, also under
   DDP (the loop saves rank 0's method state only) and whatever the batch / gradient-accumulation split.
   From preprocessed shards (``data.source=shards``, preprocessed with ``--pixels``) the win latents, caption
   embeddings and the win frames are streamed; the lose latents are still encoded here, since an edit is new at
   every position;
2. one shared ``(sigma, eps)`` per pair: ``x_sigma = (1 - sigma) x + sigma eps`` for ``x = x_w`` and
   ``x = x_l``. ``sigma`` and ``eps`` come from two random streams of their own (``trainer/random_streams.py``,
   kept in ``state_dict``), so no switch moves what it does not own: ``timestep_sampling`` changes the sigmas, not
   the noise; the distortion (``mode`` / ``distortions``), ``beta`` and ``lambda_sft`` change neither, nor the
   clips drawn;
3. ``e(m, x) = mean (v_m(x_sigma) - (eps - x))^2`` for the policy and the reference (one batched pass each);
   ``L = L_DPO + lambda_sft * L_SFT(x_w)``,
   ``L_DPO = -log sigmoid(-beta/2 [(e_th_w - e_ref_w) - (e_th_l - e_ref_l)])`` (``trainer/losses/dpo.py``),
   ``L_SFT(x_w) = mean_b e(theta, x_w)``.

Distortions: ``method_cfg.distortions`` is a spec (``"hybrid"``, ``"reverse|shuffle"``,
``{"name": "blur"}``...) or a curriculum ``[[start_step, spec], ...]`` (paper Alg. 1: operators updated every
K steps); left unset, the ablation switch ``method_cfg.mode`` (``temporal`` / ``spatial`` / ``hybrid``,
paper Fig. 4) names the preset.

Export: the policy, with the init checkpoint's own sampling config (a teacher stays a CFG sampler, a few-step
student stays few-step).

    motionlab train dfdpo --preset tiny --init tiny-teacher
    python -m pytest tests/trainer/methods/test_dfdpo.py -q
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from trainer.config import ConfigError, DFDPOConfig
from trainer.data.distortions import Curriculum
from trainer.data.shards import ShardSet, attach_shards
from trainer.data.streams import IndexStream, cached, data_key, encode_captions, load_clips
from trainer.losses.dpo import diffusion_dpo_loss, flow_matching_error
from trainer.methods.base import Method
from trainer.methods.sft import sample_sigmas
from trainer.models.generator import FULL_MODEL_SUBDIR, Generator, weights_dir
from trainer.random_streams import RandomStreams, randn_like


def build_curriculum(mcfg) -> Curriculum:
    """The distortion schedule of a config: ``distortions`` if given, else the ``mode`` preset from step 0."""
    spec = mcfg.distortions
    if spec is None:
        spec = mcfg.mode
    try:
        if isinstance(spec, (list, tuple)):
            return Curriculum([tuple(stage) if isinstance(stage, (list, tuple)) else stage for stage in spec])
        return Curriculum([(0, spec)])
    except ValueError as exc:
        raise ConfigError("method_cfg.distortions", str(exc)) from exc


class PairData:
    """Win clips (uint8, for editing) with cached win latents and caption embeddings, in a resumable order.

    Synthetic clips are held in memory; a folder is read clip by clip (a full-scale folder does not fit in
    RAM).
    """

    def __init__(self, gen: Generator, cfg, run_dir, rank: int, world_size: int):
        d = cfg.data
        if d.source == "synthetic":
            self._clips, self.captions = load_clips(d)
            self._folder = None
        else:
            from trainer.data.folder import VideoFolder

            if not d.root:
                raise ConfigError("data.root", "required when data.source is 'folder'")
            self._folder = VideoFolder(d.root, num_frames=d.num_frames, height=d.height, width=d.width)
            self._clips, self.captions = None, [e.caption for e in self._folder.entries]
        self.gen = gen
        # Same key and format as sft.LatentData: a run directory's cache serves both.
        key = data_key(d, str(cfg.init))
        blob = cached(
            run_dir / "cache" / f"latents-{key}.pt",
            lambda: {"latents": self._encode_all(), "captions": self.captions},
        )
        self.latents = blob["latents"]
        self.text, self.text_index = encode_captions(gen, self.captions)
        self.stream = IndexStream(len(self.latents), d.seed, rank, world_size)

    def __len__(self) -> int:
        return len(self.captions)

    def clip(self, i: int) -> np.ndarray:
        return self._clips[i] if self._folder is None else self._folder[i][0]

    def win_latents(self, idx: list[int]) -> torch.Tensor:
        return self.latents[idx]

    def cond(self, idx: list[int]) -> torch.Tensor:
        return self.text[self.text_index[idx]]

    @torch.no_grad()
    def encode(self, clips: list[np.ndarray]) -> torch.Tensor:
        """uint8 clips ``[T, H, W, 3]`` -> normalised latents (posterior mode, as cached), float32, CPU."""
        x = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
        return self.gen.encode_video(x.to(self.gen.vae.device)).float().cpu()

    def _encode_all(self, batch: int = 16) -> torch.Tensor:
        n = len(self.captions)
        return torch.cat([self.encode([self.clip(i) for i in range(s, min(s + batch, n))]) for s in range(0, n, batch)])


class ShardPairData:
    """``PairData`` from preprocessed shards (``--pixels``): win latents, caption embeddings and the win clips' frames
    (what the edits are made of) streamed per rank. ``take`` reads a batch; ``clip``/``win_latents``/``cond`` index
    into it by row."""

    def __init__(self, gen: Generator, shards: ShardSet, seed: int, rank: int, world_size: int):
        fields = ("latents", "text", "pixels")
        shards.require("clips", fields, "DF-DPO edits the win clips at train time: preprocess with --pixels")
        self.gen = gen
        self.stream = shards.reader("clips", fields, seed, rank, world_size)
        self._batch: dict | None = None

    def take(self, k: int) -> tuple[list[int], list[int]]:
        """The next ``k`` samples of this rank: ``(rows of the batch, their global data positions)``."""
        self._batch = self.stream.next(k)
        return list(range(k)), self._batch["position"].tolist()

    def clip(self, i: int) -> np.ndarray:
        return self._batch["pixels"][i].numpy()

    def win_latents(self, idx: list[int]) -> torch.Tensor:
        return self._batch["latents"][idx].float()

    def cond(self, idx: list[int]) -> torch.Tensor:
        return self._batch["text"][idx]

    encode = PairData.encode


class DFDPO(Method):
    name = "dfdpo"
    product_network = "policy"
    Config = DFDPOConfig

    def __init__(self, cfg, device, dtype):
        super().__init__(cfg, device, dtype)
        from trainer.zoo import resolve_checkpoint

        if not cfg.init and cfg.preset == "full":  # the full preset aligns Wan2.1-T2V-1.3B itself
            cfg.init = str(weights_dir() / FULL_MODEL_SUBDIR)
        if not cfg.init:
            raise ConfigError("init", "DF-DPO needs the checkpoint to align (e.g. --init tiny-teacher)")
        self.curriculum = build_curriculum(self.mcfg)
        shards = cfg.data.source == "shards"  # embeddings were preprocessed: the text encoder stays on disk
        self.gen = Generator.from_pretrained(resolve_checkpoint(cfg.init), device=device, text_encoder=not shards)
        self.shards = attach_shards(self.gen, cfg, latents=True) if shards else None
        self.policy = self.gen.transformer
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        self.policy.requires_grad_(True)
        if cfg.gradient_checkpointing:
            self.policy.enable_gradient_checkpointing()
        self.networks = {"policy": self.policy}
        self.frozen_networks = {"reference": self.reference}
        self.ema_networks = ("policy",)
        self.distortion = self.curriculum.at(0)

    def setup_data(self, rank, world_size):
        self.streams = RandomStreams(self.cfg.seed, rank)
        if self.shards is not None:
            self.data = ShardPairData(self.gen, self.shards, self.cfg.data.seed, rank, world_size)
        else:
            self.data = PairData(self.gen, self.cfg, self.run_dir, rank, world_size)

    # -- data ------------------------------------------------------------------------------------------------
    def edit_rng(self, position: int) -> np.random.Generator:
        """The RNG of the edit of the sample at global data position ``position`` (new edits every epoch)."""
        return np.random.default_rng([self.cfg.seed, self.cfg.data.seed, 0xDF, position])

    def next_batch(self, k: int) -> tuple[list[int], list[int]]:
        """``k`` clip indices of this rank and their global data positions (what seeds their edits)."""
        if isinstance(self.data, ShardPairData):
            return self.data.take(k)
        s = self.data.stream
        positions = [s.position + i * s.world_size + s.rank for i in range(k)]
        return s.next(k), positions

    def make_pair(self, idx: list[int], positions: list[int]):
        """``(x_w, x_l, lose_clips)``: cached win latents, latents of fresh edits of the wins, the edits."""
        lose = [self.distortion(self.data.clip(i), self.edit_rng(p)) for i, p in zip(idx, positions)]
        return self.data.win_latents(idx), self.data.encode(lose), lose

    # -- loss ------------------------------------------------------------------------------------------------
    def pair_loss(self, policy, x_w, x_l, cond, sigma, eps) -> tuple[torch.Tensor, dict]:
        """``L_DPO + lambda L_SFT(x_w)`` for win/lose latents sharing ``sigma [B]`` and ``eps``."""
        b = x_w.shape[0]
        s = sigma.view(-1, 1, 1, 1, 1)
        x0 = torch.cat([x_w, x_l])
        e2, s2 = torch.cat([eps, eps]), torch.cat([s, s])
        x_sigma = (1 - s2) * x0 + s2 * e2
        t, c = torch.cat([sigma, sigma]) * 1000.0, torch.cat([cond, cond])
        err = flow_matching_error(policy(x_sigma, t, c, return_dict=False)[0], x0, e2)
        with torch.no_grad():
            err_ref = flow_matching_error(self.reference(x_sigma, t, c, return_dict=False)[0], x0, e2)
        dpo, stats = diffusion_dpo_loss(err[:b], err_ref[:b], err[b:], err_ref[b:], self.mcfg.beta)
        sft = err[:b].mean()
        logs = {
            "dpo": stats["loss"],
            "sft": float(sft.detach()),
            "implicit_acc": stats["implicit_acc"],
            "reward_margin": stats["reward_margin"],
            "win_gap": stats["win_gap"],
            "lose_gap": stats["lose_gap"],
        }
        return dpo + self.mcfg.lambda_sft * sft, logs

    def train_step(self, step, ctx):
        self.distortion = self.curriculum.at(step)

        def loss_fn():
            idx, positions = self.next_batch(self.micro_batch)
            x_w, x_l, _ = self.make_pair(idx, positions)
            x_w, x_l = x_w.to(self.device), x_l.to(self.device)
            cond = self.data.cond(idx).to(self.device)
            sigma = sample_sigmas(
                len(idx),
                self.mcfg.timestep_sampling,
                self.mcfg.shift,
                self.device,
                generator=self.random_stream("sigma"),
            )
            eps = randn_like(x_w, self.random_stream("noise"))
            return self.pair_loss(ctx.net("policy"), x_w, x_l, cond, sigma, eps)

        return ctx.update("policy", loss_fn)

    def export(self, out_dir, weights):
        # self.gen.sampling is the init checkpoint's own (teacher or few-step): the policy is sampled the same
        # way.
        return self.gen.save_pretrained(out_dir, transformer=weights["policy"], sampling=self.product_sampling())

    def state_dict(self):
        # The stream position is also the state of the edits' RNG (see ``edit_rng``).
        return {"data": self.data.stream.state_dict(), "streams": self.streams.state_dict()}

    def load_state_dict(self, state):
        self.data.stream.load_state_dict(state["data"])
        self.streams.load_state_dict(state.get("streams", {"counts": {}}))
