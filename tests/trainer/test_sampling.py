import numpy as np
import pytest
import torch

from trainer.flowmo import FlowMoConfig, FlowMoError
from trainer.models.generator import TINY_VAE, Generator, SamplingConfig
from trainer.sampling import (
    SamplingOptionError,
    SamplingOptions,
    SeededNoise,
    few_step_sigmas,
    few_step_unroll,
    generate_batch,
    generate_latents,
    generate_videos,
    predict_velocity,
    resolve_sampling,
    sample_teacher,
    shift_sigmas,
    teacher_sigmas,
)


class ExactVelocity(torch.nn.Module):
    """The true velocity field for data concentrated at one point x0: v = (x - x0) / sigma."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t, cond, return_dict=False):
        sigma = (t / 1000.0).view(-1, *([1] * (x.ndim - 1)))
        return ((x - self.x0) / sigma,)


def test_shift_and_schedule():
    assert torch.allclose(shift_sigmas(torch.tensor([0.0, 0.5, 1.0]), 3.0), torch.tensor([0.0, 0.75, 1.0]))
    s = teacher_sigmas(4, 1.0)
    assert torch.allclose(s, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    assert torch.allclose(few_step_sigmas([1000, 757, 522]), torch.tensor([1.0, 0.757, 0.522]))


def test_euler_teacher_reaches_the_point_mass():
    x0 = torch.randn(2, 4, 3, 2, 2)
    noise = torch.randn_like(x0)
    out = sample_teacher(ExactVelocity(x0), noise, torch.zeros(2, 1, 1), None, num_steps=10, shift=3.0)
    assert torch.allclose(out, x0, atol=1e-4)


def test_euler_teacher_starts_part_way():
    x0, eps = torch.randn(2, 4, 3, 2, 2), torch.randn(2, 4, 3, 2, 2)
    sigmas, calls = teacher_sigmas(10, 3.0), []

    class Counting(ExactVelocity):
        def forward(self, x, t, cond, return_dict=False):
            calls.append(float(t[0]))
            return super().forward(x, t, cond)

    start = (1 - sigmas[6]) * x0 + sigmas[6] * eps
    out = sample_teacher(Counting(x0), start, torch.zeros(2, 1, 1), None, num_steps=10, shift=3.0, first_step=6)
    assert torch.allclose(out, x0, atol=1e-4)
    assert calls == pytest.approx([1000.0 * float(s) for s in sigmas[6:10]])  # only the steps from first_step on
    assert torch.equal(sample_teacher(Counting(x0), start, None, None, num_steps=10, first_step=10), start)
    with pytest.raises(ValueError, match="first_step"):
        sample_teacher(Counting(x0), start, None, None, num_steps=10, first_step=11)


def test_few_step_predicts_x0_and_renoises():
    x0 = torch.randn(1, 4, 3, 2, 2)
    calls = []

    def next_noise(shape, device, dtype):
        calls.append(shape)
        return torch.zeros(shape)[None]

    out = few_step_unroll(
        ExactVelocity(x0), torch.randn_like(x0), torch.zeros(1, 1, 1), few_step_sigmas([1000, 757, 522]), next_noise
    )
    assert torch.allclose(out, x0, atol=1e-5)
    assert len(calls) == 2  # re-noised between steps, not after the last


def test_cfg_forms_agree():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)

    class Net(torch.nn.Module):
        def forward(self, x, t, cond, return_dict=False):
            return (lin(x) + cond.mean(dim=(1, 2)).view(-1, 1) * torch.ones_like(x),)

    x = torch.randn(2, 4)
    cond, uncond = torch.ones(2, 1, 1), torch.zeros(2, 1, 1)
    s = torch.full((2,), 0.5)
    std = predict_velocity(Net(), x, s, cond, uncond, guidance=4.0, cfg_form="standard")
    plus = predict_velocity(Net(), x, s, cond, uncond, guidance=3.0, cfg_form="plus_one")
    assert torch.allclose(std, plus, atol=1e-6)
    v_c = Net()(x, s * 1000, cond)[0]
    v_u = Net()(x, s * 1000, uncond)[0]
    assert torch.allclose(std, v_u + 4.0 * (v_c - v_u), atol=1e-6)


def test_seeded_noise_is_batch_independent():
    a = SeededNoise([3, 7])((2, 2), "cpu")
    b = SeededNoise([7])((2, 2), "cpu")
    assert torch.equal(a[1], b[0])


def test_generation_deterministic_and_batch_invariant(tiny_pipeline_dir):
    gen = Generator.from_pretrained(tiny_pipeline_dir)
    few = gen.sampling.few_step()
    kw = {"sampling": few, "num_frames": 5}
    both = generate_latents(gen, ["a red square moves left", "a blue circle moves up"], [1, 2], **kw)
    one = generate_latents(gen, ["a blue circle moves up"], [2], **kw)
    again = generate_latents(gen, ["a blue circle moves up"], [2], **kw)
    other_seed = generate_latents(gen, ["a blue circle moves up"], [3], **kw)
    assert torch.equal(one, again)
    assert torch.allclose(both[1], one[0], atol=1e-5)
    assert not torch.allclose(one, other_seed)
    teacher = generate_latents(gen, ["a red square moves left"], [1], sampling=gen.sampling, num_frames=5)
    assert teacher.shape == (1, TINY_VAE["z_dim"], 2, 8, 8) and torch.isfinite(teacher).all()


TEACHER = SamplingConfig(kind="teacher", num_steps=50, guidance_scale=5.0, num_frames=17, height=32, width=32)
STUDENT = TEACHER.few_step([1000.0, 757.0, 522.0])


def test_options_override_a_checkpoints_sampling_and_leave_the_rest():
    assert resolve_sampling(TEACHER) == TEACHER and resolve_sampling(TEACHER, SamplingOptions()) == TEACHER
    s = resolve_sampling(TEACHER, SamplingOptions(steps=8, guidance=3.5, num_frames=5, height=16, width=24))
    assert (s.num_steps, s.guidance_scale, s.num_frames, s.height, s.width) == (8, 3.5, 5, 16, 24)
    assert (s.shift, s.cfg_form, s.fps, s.negative_prompt) == (TEACHER.shift, "standard", TEACHER.fps, "")
    assert TEACHER.num_steps == 50 and TEACHER.num_frames == 17  # the checkpoint's settings are not changed
    few = resolve_sampling(STUDENT, SamplingOptions(steps=5, guidance=7.0))
    assert few.timesteps == [1000.0, 880.5, 761.0, 641.5, 522.0] and few.num_steps == 5  # respaced, same ends
    assert resolve_sampling(STUDENT, SamplingOptions(steps=1)).timesteps == [1000.0]
    assert resolve_sampling(STUDENT, SamplingOptions(steps=3)).timesteps == [1000.0, 761.0, 522.0]


def test_options_from_a_requests_fields():
    o = SamplingOptions.from_params(
        {"prompt": "a", "steps": 4, "guidance": 2.0, "height": 16, "sampler": "flowmo", "flowmo_stop": 2}
    )
    assert (o.steps, o.guidance, o.num_frames, o.height, o.width) == (4, 2.0, None, 16, None)
    assert o.flowmo == FlowMoConfig(stop=2)
    assert SamplingOptions.from_params({"sampler": "default"}) == SamplingOptions()
    with pytest.raises(FlowMoError, match="flowmo_eta: is a FlowMo setting"):
        SamplingOptions.from_params({"flowmo_eta": 0.5})


@pytest.mark.parametrize(
    "options, field, limit, message",
    [
        (SamplingOptions(steps=0), "steps", 1, "steps: must be >= 1 (got 0)"),
        (SamplingOptions(steps=1001), "steps", 1000, "steps: must be <= 1000 (got 1001)"),
        (SamplingOptions(steps=2.5), "steps", None, "steps: must be a whole number (got 2.5)"),
        (SamplingOptions(steps=True), "steps", None, "steps: must be a whole number (got True)"),
        (SamplingOptions(guidance=-0.5), "guidance", 0, "guidance: must be >= 0 (got -0.5)"),
        (SamplingOptions(guidance=float("nan")), "guidance", None, "guidance: must be a finite number >= 0"),
        (SamplingOptions(num_frames=0), "num_frames", 1, "num_frames: must be >= 1 (got 0)"),
        (SamplingOptions(width=-8), "width", 1, "width: must be >= 1 (got -8)"),
    ],
)
def test_an_option_out_of_bounds_names_its_field_and_limit(options, field, limit, message):
    for defaults in (TEACHER, STUDENT):
        with pytest.raises(SamplingOptionError) as err:
            resolve_sampling(defaults, options)
        assert (err.value.field, err.value.limit) == (field, limit) and message in str(err.value)


def test_flowmos_range_is_checked_against_the_resolved_steps():
    fm = FlowMoConfig(stop=4)
    assert resolve_sampling(TEACHER, SamplingOptions(flowmo=fm)) == TEACHER  # the teacher's own steps: the range fits
    with pytest.raises(FlowMoError, match="flowmo_stop: must be <= 3, the sampler's number of steps") as err:
        resolve_sampling(TEACHER, SamplingOptions(steps=3, flowmo=fm))
    assert err.value.limit == 3
    with pytest.raises(FlowMoError, match="must be <= 3"):
        resolve_sampling(STUDENT, SamplingOptions(flowmo=fm))  # the student's own 3 steps
    assert resolve_sampling(STUDENT, SamplingOptions(steps=4, flowmo=fm)).num_steps == 4


def test_a_batch_is_the_training_path_with_its_info_and_stage_times(tiny_pipeline_dir):
    gen = Generator.from_pretrained(tiny_pipeline_dir)
    s = resolve_sampling(gen.sampling, SamplingOptions(steps=2, num_frames=5, height=16, width=16))
    prompts, seeds = ["a red square moves left", "a blue circle moves up"], [1, 2]
    batch = generate_batch(gen, s, prompts, seeds)
    torch.testing.assert_close(batch.latents, generate_latents(gen, prompts, seeds, sampling=s), atol=0, rtol=0)
    videos = generate_videos(gen, prompts, seeds, sampling=s)
    assert all(np.array_equal(a, b) for a, b in zip(batch.frames, videos, strict=True))
    assert batch.frames[0].shape == (5, 16, 16, 3) and batch.frames[0].dtype == np.uint8
    assert batch.info == {"network_evaluations": 4, "kind": "teacher", "steps": 2, "fps": s.fps, "sampler": "default"}
    assert set(batch.timings) == {"text_encoding", "denoising", "vae_decoding"}
    assert all(v > 0 for v in batch.timings.values())
