"""Device choice: --device auto / cuda claim a GPU (gpu_claim), cuda:N and cpu are taken as
given, cuda without a GPU fails at once. CUDA is faked on the CPU."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from virnucpro import device, gpu_claim, predict
from virnucpro.errors import VirnucproError


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv(gpu_claim.SHARE_ENV, raising=False)
    yield
    gpu_claim.release_all()


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path):
    """Two visible 'GPUs' with UUIDs; locks in tmp_path."""
    uuids = ["0c5e76b4-1111", "9f00aa00-2222"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(uuids))
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=uuids[i])
    )
    monkeypatch.setenv(gpu_claim.LOCK_DIR_ENV, str(tmp_path))
    return uuids


def test_gpu_ids_are_uuids_as_nvidia_smi_writes_them(fake_cuda):
    assert device.gpu_ids(2) == ["GPU-0c5e76b4-1111", "GPU-9f00aa00-2222"]


def test_gpu_ids_without_uuid_fall_back_to_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(uuid=""))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert device.gpu_ids(2) == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert device.gpu_ids(2) == ["0", "1"]


@pytest.mark.parametrize("requested", ["auto", "cuda"])
def test_auto_and_cuda_claim_distinct_gpus(fake_cuda, requested):
    assert [device.select_device(requested) for _ in range(2)] == [
        torch.device("cuda:0"), torch.device("cuda:1")
    ]  # fmt: skip


def test_cuda_with_index_claims_nothing(fake_cuda, tmp_path):
    assert device.select_device("cuda:1") == torch.device("cuda:1")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("visible", [None, "", "7"])
def test_cuda_without_a_gpu_fails_at_once(monkeypatch, visible):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    where = " not set" if visible is None else f"={visible}"
    message = f"--device cuda: no CUDA GPU is visible (CUDA_VISIBLE_DEVICES{where})"
    with pytest.raises(VirnucproError) as e:
        device.select_device("cuda")
    assert str(e.value) == message
    with pytest.raises(VirnucproError) as e:
        predict.plan_devices("cuda", None, None)
    assert str(e.value) == message
    assert device.select_device("auto") == torch.device("cpu")


def test_predict_cuda_uses_every_visible_gpu(fake_cuda, tmp_path):
    assert predict.plan_devices("cuda", None, None) == ["cuda:0", "cuda:1"]
    assert list(tmp_path.iterdir()) == []  # predict's workers share no GPU: nothing claimed


# --------------------------------------------------------------------------------------
# Precision: fp8 needs FP8 tensor cores and is never chosen by auto
# --------------------------------------------------------------------------------------


def fake_gpu(monkeypatch, capability: tuple[int, int], name: str) -> torch.device:
    """One visible 'GPU' of this compute capability."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: capability)
    props = SimpleNamespace(name=name, major=capability[0], minor=capability[1],
                            total_memory=80 * 2**30, uuid="")  # fmt: skip
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d=None: props)
    return torch.device("cuda:0")


def test_fp8_is_refused_on_the_cpu_in_one_line():
    with pytest.raises(VirnucproError) as e:
        device.select_precision(torch.device("cpu"), "fp8")
    assert str(e.value) == (
        "--precision fp8: needs a GPU with FP8 tensor cores (compute capability 8.9 or "
        "newer); cpu has none"
    )


@pytest.mark.parametrize(("capability", "name"), [((8, 6), "NVIDIA RTX A6000"),
                                                  ((8, 0), "NVIDIA A100-SXM4-80GB")])  # fmt: skip
def test_fp8_is_refused_on_gpus_without_fp8_tensor_cores(monkeypatch, capability, name):
    gpu = fake_gpu(monkeypatch, capability, name)
    with pytest.raises(VirnucproError) as e:
        device.select_precision(gpu, "fp8")
    major, minor = capability
    assert str(e.value) == (
        "--precision fp8: needs a GPU with FP8 tensor cores (compute capability 8.9 or "
        f"newer); cuda:0 ({name}, compute capability {major}.{minor}) has none"
    )
    assert "\n" not in str(e.value)
    # the other precisions are as before
    assert device.select_precision(gpu, "auto") == "bf16"
    assert [device.select_precision(gpu, p) for p in ("fp32", "bf16", "fp16")] == [
        "fp32", "bf16", "fp16"
    ]  # fmt: skip


@pytest.mark.parametrize("capability", [(8, 9), (9, 0), (10, 0)])
def test_fp8_is_taken_on_ada_hopper_and_newer_but_never_chosen_by_auto(monkeypatch, capability):
    gpu = fake_gpu(monkeypatch, capability, "NVIDIA H200")
    assert device.select_precision(gpu, "fp8") == "fp8"
    assert device.fp8_missing(gpu) is None
    assert device.select_precision(gpu, "auto") == "bf16"


def test_fp8_is_refused_in_one_line_without_triton(monkeypatch):
    gpu = fake_gpu(monkeypatch, (9, 0), "NVIDIA H200")
    real = device.importlib.util.find_spec
    missing = lambda name: None if name == "triton" else real(name)  # noqa: E731
    monkeypatch.setattr(device.importlib.util, "find_spec", missing)
    with pytest.raises(VirnucproError) as e:
        device.select_precision(gpu, "fp8")
    assert str(e.value) == (
        "--precision fp8: needs Triton (installed with PyTorch on Linux); not found"
    )


def test_fp8_on_the_cpu_only_as_a_simulation_when_asked():
    cpu = torch.device("cpu")
    assert device.select_precision(cpu, "fp8", simulate_fp8=True) == "fp8"
    assert device.select_precision(cpu, "auto", simulate_fp8=True) == "fp32"


def test_fp8_simulation_does_not_lift_the_gpu_check(monkeypatch):
    gpu = fake_gpu(monkeypatch, (8, 6), "NVIDIA RTX A6000")
    with pytest.raises(VirnucproError, match="compute capability 8.6"):
        device.select_precision(gpu, "fp8", simulate_fp8=True)


def test_precision_errors_are_unchanged():
    cpu = torch.device("cpu")
    with pytest.raises(VirnucproError, match="needs a CUDA GPU"):
        device.select_precision(cpu, "fp16")
    with pytest.raises(VirnucproError) as e:
        device.select_precision(cpu, "int8")
    assert str(e.value) == "--precision: 'int8' is not one of auto, fp32, bf16, fp16, fp8"
    assert [device.select_precision(cpu, p) for p in ("auto", "fp32", "bf16")] == [
        "fp32", "fp32", "bf16"
    ]  # fmt: skip


def test_fp8_models_load_in_bf16():
    assert device.model_dtype("fp8") == torch.bfloat16
    assert {p: device.model_dtype(p) for p in device.DTYPES} == device.DTYPES
    assert "fp8" not in device.DTYPES  # no torch dtype of its own


def test_predict_refuses_fp8_on_gpus_without_it_before_writing_anything(monkeypatch, tmp_path):
    """predict checks --precision against every worker's GPU before it writes a file."""
    from virnucpro.models.files import ModelPaths

    fake_gpu(monkeypatch, (8, 6), "NVIDIA RTX A6000")
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nACGT\n")
    out = tmp_path / "out"
    missing = ModelPaths(tmp_path / "esm2.pt", tmp_path / "dnabert-s", tmp_path / "c.safetensors")
    with pytest.raises(VirnucproError, match=r"cuda:0 \(NVIDIA RTX A6000, compute capability 8.6"):
        predict.predict(fasta, out, missing, device="cuda", precision="fp8")
    assert not out.exists()


def test_predict_refuses_fp8_when_one_of_its_gpus_lacks_it(monkeypatch, tmp_path):
    from virnucpro.models.files import ModelPaths

    gpus = {0: ((9, 0), "NVIDIA H100"), 1: ((8, 0), "NVIDIA A100")}

    def index(d):
        return torch.device(d).index or 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: gpus[index(d)][0])
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d: SimpleNamespace(name=gpus[index(d)][1]))  # fmt: skip
    fasta, out = tmp_path / "in.fa", tmp_path / "out"
    fasta.write_text(">a\nACGT\n")
    missing = ModelPaths(tmp_path / "esm2.pt", tmp_path / "dnabert-s", tmp_path / "c.safetensors")
    with pytest.raises(VirnucproError, match=r"cuda:1 \(NVIDIA A100, compute capability 8.0\)"):
        predict.predict(fasta, out, missing, device="cuda", precision="fp8")
    assert not out.exists()
