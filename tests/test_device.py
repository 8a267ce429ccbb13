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
