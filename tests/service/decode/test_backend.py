"""ADAFOCUS_DECODER: the choice made once at start-up, `nvdec` refused where it cannot run, `auto` falling back."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from model.video import sample_clip
from model.video_nvdec import nvdec_unavailable, sample_clip_nvdec
from service.decode.backend import DecoderUnavailable, choose_decoder
from service.settings import Settings
from tests.service.conftest import in_process


def test_cpu_never_asks_about_nvdec_and_auto_takes_nvdec_when_it_can_run() -> None:
    def asked() -> str | None:
        raise AssertionError("cpu must not probe NVDEC")

    cpu = choose_decoder("cpu", asked)
    assert (cpu.backend, cpu.job_fn) == ("cpu", sample_clip)
    for setting in ("auto", "nvdec"):
        chosen = choose_decoder(setting, lambda: None)  # type: ignore[arg-type]
        assert (chosen.backend, chosen.job_fn) == ("nvdec", sample_clip_nvdec)
        assert chosen.reason == f"ADAFOCUS_DECODER={setting}: NVDEC is available"


def test_auto_falls_back_to_the_cpu_and_says_why_and_nvdec_is_refused() -> None:
    auto = choose_decoder("auto", lambda: "no CUDA device is visible to torch")
    assert (auto.backend, auto.job_fn) == ("cpu", sample_clip)
    assert auto.reason == "ADAFOCUS_DECODER=auto: no CUDA device is visible to torch, so the CPU decoder"
    with pytest.raises(DecoderUnavailable) as refused:
        choose_decoder("nvdec", lambda: "no CUDA device is visible to torch")
    assert str(refused.value) == "ADAFOCUS_DECODER=nvdec, but NVDEC cannot run here: no CUDA device is visible to torch"


def test_the_setting_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAFOCUS_DECODER", "gpu")
    with pytest.raises(ValidationError, match="decoder"):
        Settings()
    monkeypatch.setenv("ADAFOCUS_DECODER", "nvdec")
    assert Settings().decoder == "nvdec"
    monkeypatch.delenv("ADAFOCUS_DECODER")
    assert Settings().decoder == "auto"


@pytest.mark.skipif(nvdec_unavailable() is None, reason="NVDEC runs on this host: nothing to refuse")
def test_a_server_told_nvdec_where_it_cannot_run_does_not_start(tiny_bundle: Path) -> None:
    # here: no PyNvVideoCodec (and no GPU), so the real probe refuses; the start-up stops with its reason
    with pytest.raises(DecoderUnavailable, match="ADAFOCUS_DECODER=nvdec, but NVDEC cannot run here: the "
                       "PyNvVideoCodec package is not installed"):
        for _ in in_process(tiny_bundle, decoder="nvdec"):
            pass
