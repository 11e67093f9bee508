"""Distillation: student construction, the loss terms, the wrapper, and the errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from compressor import checkpoint
from compressor.data import load_folder
from compressor.distill import DistillParams, build_student, distill
from compressor.distill.rd_kd import (
    DistillAdapter,
    complexity,
    distill_loss,
    fit_adapter,
    latent_loss,
    run_capturing,
)
from compressor.errors import RecipeError
from compressor.models import MODELS, CodecAdapter
from compressor.train import rd_loss
from tests.conftest import tiny_model

SMALL = {
    "crop": 64,
    "val_crop": 64,
    "batch_size": 2,
    "val_fraction": 0.25,
    "threads": 1,
    "lr": 1e-3,
}


def teacher16() -> CodecAdapter:
    torch.manual_seed(0)
    model = MODELS.get("bmshj2018-hyperprior").build("bmshj2018-hyperprior", {"N": 16, "M": 24})
    model.finalize()
    return model.eval()


def test_half_width_student_has_about_a_quarter_of_the_macs() -> None:
    teacher = teacher16()
    student = build_student(teacher, DistillParams(width=0.5))
    assert student.arch == teacher.arch and student.config == {"N": 8, "M": 12}
    ratios = {r["component"]: r["macs_ratio"] for r in complexity(teacher, student)}
    # inner N x N convolutions shrink 4x; the RGB-facing first/last layers only 2x, which
    # weighs more at N=16 than at the bundled N=128 (below)
    assert 0.25 < ratios["encoder"] < 0.34 and 0.25 < ratios["decoder"] < 0.34
    assert ratios["hyper_encoder"] == pytest.approx(0.25, abs=0.01)


def test_bundled_size_half_width_is_about_4x_fewer_macs() -> None:
    arch = "bmshj2018-hyperprior"
    teacher = MODELS.get(arch).build(arch, {"N": 128, "M": 192}).eval()
    student = build_student(teacher, DistillParams(width=0.5, init="random"))
    assert student.config == {"N": 64, "M": 96}
    ratios = {r["component"]: r["macs_ratio"] for r in complexity(teacher, student)}
    # by hand: g_a per input pixel 2400 + 25600 + 6400 + 2400 MACs -> 1200 + 6400 + 1600 + 600
    assert ratios["encoder"] == pytest.approx(9800 / 36800, abs=0.005)
    assert ratios["decoder"] == pytest.approx(9800 / 36800, abs=0.005)


def test_teacher_init_keeps_the_teachers_strongest_channels() -> None:
    teacher = teacher16()
    student = build_student(teacher, DistillParams(width=0.5, init="teacher"))
    t_w, s_w = teacher.net.g_a[0].weight, student.net.g_a[0].weight
    assert s_w.shape == (8, 3, 5, 5)
    # every student filter is one of the teacher's (torch-pruning's group L1 chose which)
    kept = [int(((t_w - row).abs().flatten(1).sum(1) == 0).nonzero()[0]) for row in s_w]
    assert len(set(kept)) == 8
    random = build_student(teacher, DistillParams(width=0.5, init="random"))
    assert not any(((t_w - row).abs().sum() == 0) for row in random.net.g_a[0].weight)


def test_least_squares_adapter_matches_an_equal_width_latent() -> None:
    teacher = teacher16()
    student = build_student(teacher, DistillParams(width=1.0))  # a copy of the teacher
    x = torch.rand(2, 3, 64, 64)
    adapter = fit_adapter(student, teacher, x)
    with torch.no_grad():
        _, y_s = run_capturing(student, x)
        _, y_t = run_capturing(teacher, x)
        assert latent_loss(y_s, y_t, adapter) < 1e-4
        half = build_student(teacher, DistillParams(width=0.5))
        _, y_h = run_capturing(half, x)
        fitted = latent_loss(y_h, y_t, fit_adapter(half, teacher, x))
        assert fitted < latent_loss(y_h, y_t, torch.nn.Conv2d(12, 24, 1))


def test_rd_terms_alone_equal_the_rd_loss() -> None:
    teacher = tiny_model()
    student = build_student(teacher, DistillParams(width=0.5))
    wrapper = DistillAdapter(student, torch.nn.ModuleDict()).eval()
    x = torch.rand(2, 3, 64, 64)
    loss_fn = distill_loss(teacher, {"distortion": 1.0, "rate": 1.0}, 0.0035)
    with torch.no_grad():
        loss, logs = loss_fn(wrapper, x)
        reference, ref_logs = rd_loss(0.0035)(student, x)
    assert float(loss) == pytest.approx(float(reference), rel=1e-5)
    assert logs["psnr"] == pytest.approx(ref_logs["psnr"]) and "output_term" not in logs


def test_wrapper_trains_student_and_adapters_and_delegates_aux() -> None:
    teacher = tiny_model()
    student = build_student(teacher, DistillParams(width=0.5))
    adapters = torch.nn.ModuleDict({"latent": torch.nn.Conv2d(6, 12, 1)})
    wrapper = DistillAdapter(student, adapters)
    main_ids = {id(p) for p in wrapper.net.parameters()}
    assert {id(p) for p in adapters.parameters()} <= main_ids
    assert [id(p) for p in wrapper.aux_parameters()] == [id(p) for p in student.aux_parameters()]
    state = wrapper.state_dict()
    assert any(k.startswith("adapters.") for k in state)
    wrapper.load_state_dict(state)  # split back into the student's own loader and the adapters


def test_distill_lowers_the_loss_and_saves_the_student_alone(
    images_dir: Path, tmp_path: Path
) -> None:
    teacher = tiny_model()
    params = DistillParams(width=0.5, train={"max_steps": 30, "eval_every": 10, **SMALL})
    quantiles = build_student(teacher, params).net.entropy_bottleneck.quantiles.clone()
    result = distill(teacher, load_folder(images_dir), params, tmp_path / "s.pt")
    losses = [h["loss"] for h in result.train.history]
    assert len(losses) == 3 and losses[-1] < 0.8 * losses[0]
    assert {"output_term", "latent_term", "distortion_term", "rate_term"} <= set(
        result.train.history[-1]
    )
    saved = checkpoint.load(tmp_path / "s.pt")
    assert saved.arch == "bmshj2018-hyperprior" and saved.config == {"N": 4, "M": 6}
    assert not any("adapters" in k for k in saved.state_dict())
    assert saved.meta["distill"]["teacher"]["config"] == {"N": 8, "M": 12}
    assert saved.meta["train"]["steps"] == 30
    assert not (tmp_path / "s.distill.pt").exists()  # the wrapper's file is gone
    # the aux optimizer trained the student's entropy-model quantiles
    assert not torch.equal(saved.net.entropy_bottleneck.quantiles, quantiles)


def test_distill_resumes(images_dir: Path, tmp_path: Path) -> None:
    teacher, images = tiny_model(), load_folder(images_dir)
    first = DistillParams(train={"max_steps": 4, "eval_every": 2, **SMALL})
    distill(teacher, images, first, tmp_path / "s.pt")
    assert (tmp_path / "s.distill.resume.pt").exists()
    more = DistillParams(train={"max_steps": 6, "eval_every": 2, **SMALL})
    result = distill(teacher, images, more, tmp_path / "s.pt")
    assert [h["step"] for h in result.train.history] == [2, 4, 6]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"width": 1.5}, "allowed: 0 < width <= 1"),
        ({"width": 0}, "allowed: 0 < width <= 1"),
        ({"losses": {"kl": 1.0}}, "unknown loss 'kl'; allowed: distortion, output, latent, rate"),
        ({"losses": {"rate": 1.0}}, "weight distortion or output above 0"),
        ({"losses": {"output": -1.0}}, "negative weight"),
        ({"nonsense": 1}, "Extra inputs are not permitted"),
    ],
)
def test_bad_params_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DistillParams.model_validate(fields)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"config": {"N": 16, "M": 6}}, "student N=16 is wider than the teacher's N=8"),
        ({"student": "mimic"}, "cannot learn from a bmshj2018-hyperprior teacher"),
        ({"student": "nope"}, "unknown model arch 'nope'"),
        ({"config": {"N": 4}}, "needs exactly N, M"),
        ({"student": "bmshj2018-factorized", "init": "teacher"}, "use init: random"),
    ],
)
def test_bad_students_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        build_student(tiny_model(), DistillParams.model_validate(fields))


def test_another_arch_of_the_family_can_be_the_student() -> None:
    student = build_student(tiny_model(), DistillParams(student="bmshj2018-factorized"))
    assert student.arch == "bmshj2018-factorized" and student.config == {"N": 4, "M": 6}
