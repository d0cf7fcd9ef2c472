"""Settings: environment variables, validation that fails fast, derived component configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from model.video import DecodeLimits, encode_video
from service.engine.config import EngineConfig
from service.engine.runners.torch_runner import TorchOptions, TorchRunner
from service.settings import Settings
from service.startup import StartupError, load_settings
from tests.service.conftest import in_process, ramp, service_state


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("ADAFOCUS_"):
            monkeypatch.delenv(key)


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ADAFOCUS_PORT", "9001")
    monkeypatch.setenv("ADAFOCUS_BUNDLE", str(tmp_path))
    monkeypatch.setenv("ADAFOCUS_MODE", "drain")
    monkeypatch.setenv("ADAFOCUS_MAX_BATCH", "4")
    monkeypatch.setenv("ADAFOCUS_MAX_UPLOAD_BYTES", "1000")
    monkeypatch.setenv("ADAFOCUS_OPERATOR_TOKEN", "x" * 20)
    monkeypatch.setenv("ADAFOCUS_LOG_LEVEL", "debug")
    s = Settings()
    assert (s.port, s.bundle, s.mode, s.max_batch, s.log_level) == (9001, tmp_path, "drain", 4, "DEBUG")
    assert s.operator_token is not None and s.operator_token.get_secret_value() == "x" * 20
    assert "x" * 20 not in repr(s)  # the token never shows in logs
    assert s.engine_config() == EngineConfig(mode="drain", max_batch=4, max_active=64, max_queue=256)
    assert s.decode_limits() == DecodeLimits(
        max_bytes=1000, max_pixels_per_frame=3840 * 2160, max_duration_s=600.0, max_decode_s=20.0
    )


def test_init_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAFOCUS_PORT", "9001")
    assert Settings(port=9002).port == 9002


def test_token_from_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "token").write_text("y" * 32 + "\n")
    monkeypatch.setenv("ADAFOCUS_OPERATOR_TOKEN_FILE", str(tmp_path / "token"))
    token = Settings().operator_token
    assert token is not None and token.get_secret_value() == "y" * 32
    (tmp_path / "token").write_text("short")
    with pytest.raises(ValidationError, match="at least 16 characters"):
        Settings()
    monkeypatch.setenv("ADAFOCUS_OPERATOR_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValidationError, match="cannot be read"):
        Settings()


def test_empty_token_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAFOCUS_OPERATOR_TOKEN", "")
    assert Settings().operator_token is None


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ADAFOCUS_PORT", "70000", "less than or equal to 65535"),
        ("ADAFOCUS_DEVICE", "tpu", "ADAFOCUS_DEVICE must be auto, cpu, cuda or cuda:N"),
        ("ADAFOCUS_BACKEND", "tensorflow", "'torch', 'onnx' or 'auto'"),
        ("ADAFOCUS_MODE", "fast", "'continuous', 'drain' or 'single'"),
        ("ADAFOCUS_MAX_QUEUE", "0", "greater than or equal to 1"),
        ("ADAFOCUS_OPERATOR_TOKEN", "short", "at least 16 characters"),
        ("ADAFOCUS_BUNDLE", "/no/such/dir", "is not a directory"),
        ("ADAFOCUS_REQUEST_TIMEOUT_S", "-1", "greater than 0"),
    ],
)
def test_bad_values_fail_fast(monkeypatch: pytest.MonkeyPatch, name: str, value: str, message: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=message):
        Settings()


def test_min_glance_batch_reaches_the_engine_config_and_is_bounded_by_max_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert Settings().engine_config().min_glance_batch == 1
    monkeypatch.setenv("ADAFOCUS_MAX_BATCH", "8")
    monkeypatch.setenv("ADAFOCUS_MAX_ACTIVE", "8")
    monkeypatch.setenv("ADAFOCUS_MIN_GLANCE_BATCH", "4")
    assert Settings().engine_config() == EngineConfig(max_batch=8, max_active=8, min_glance_batch=4)
    monkeypatch.setenv("ADAFOCUS_MIN_GLANCE_BATCH", "9")
    with pytest.raises(ValidationError, match=r"min_glance_batch \(9\) must be <= max_batch \(8\)"):
        Settings()


def test_runner_variants_apply_to_the_torch_backend_only() -> None:
    s = Settings(precision="bf16", channels_last=True, backend="auto")
    assert (s.precision, s.channels_last, s.cuda_graphs) == ("bf16", True, False)
    assert Settings(cuda_graphs=True, device="cuda").cuda_graphs
    with pytest.raises(ValidationError, match="apply to the torch backend"):
        Settings(backend="onnx", precision="bf16")
    with pytest.raises(ValidationError, match="ADAFOCUS_CUDA_GRAPHS needs a CUDA device"):
        Settings(cuda_graphs=True, device="cpu")
    with pytest.raises(ValidationError, match="'fp32' or 'bf16'"):
        Settings(precision="fp16")  # type: ignore[arg-type]


def test_active_cap_below_batch_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"max_active \(2\) must be >= max_batch \(4\)"):
        Settings(max_batch=4, max_active=2)


def test_serve_refuses_bad_settings_before_loading_anything(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "ADAFOCUS_MAX_BATCH": "zero"}
    entry = Path(sys.executable).parent / "adafocus"
    done = subprocess.run([str(entry), "serve", "--bundle", str(tmp_path)], env=env, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.decode().strip().splitlines()[-1].endswith(
        "invalid settings: ADAFOCUS_MAX_BATCH: Input should be a valid integer, unable to parse string as an integer"
    )


def test_min_glance_batch_auto_means_the_measured_knee(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAFOCUS_MIN_GLANCE_BATCH", "auto")
    monkeypatch.setenv("ADAFOCUS_MAX_GLANCE_WAIT_STEPS", "6")
    config = Settings().engine_config()
    assert (config.min_glance_batch, config.max_glance_wait_steps) == (None, 6)
    monkeypatch.setenv("ADAFOCUS_MIN_GLANCE_BATCH", "sometimes")
    with pytest.raises(ValidationError):
        Settings()


def test_a_rejected_operator_token_never_reaches_the_log(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    secret = "hunter2-secret"  # 14 characters: refused for being short, and must not be printed
    with pytest.raises(ValidationError) as info:
        Settings(operator_token=secret)
    assert secret not in str(info.value) and "at least 16 characters" in str(info.value)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADAFOCUS_")}
    env["ADAFOCUS_OPERATOR_TOKEN"] = secret
    entry = Path(sys.executable).parent / "adafocus"
    done = subprocess.run([str(entry), "serve", "--bundle", str(tmp_path)], env=env, capture_output=True, timeout=60)
    assert done.returncode == 2
    assert b"at least 16 characters" in done.stderr
    assert secret.encode() not in done.stdout + done.stderr


def test_the_server_runs_the_runner_variant_its_settings_name(tiny_bundle: Path, tmp_path: Path) -> None:
    video = encode_video(tmp_path / "v.mp4", ramp(12, 48, 64), "libx264")
    for client in in_process(tiny_bundle, precision="bf16", channels_last=True):
        runner = service_state(client).engine.runner
        assert isinstance(runner, TorchRunner)
        assert runner.options == TorchOptions(precision="bf16", channels_last=True)
        with video.open("rb") as fh:
            answer = client.post("/classify", files={"video": ("v.mp4", fh)})
        assert answer.status_code == 200, answer.text
        assert 0 <= answer.json()["class_id"] < 10


@pytest.mark.parametrize("value", ["cost", "eager", "EAGER"])
def test_admission_rule_reaches_the_engine_config(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    assert Settings().engine_config().admission == "cost"  # the default
    monkeypatch.setenv("ADAFOCUS_ADMISSION", value)
    if value == "EAGER":  # the rule names are lower case, as every other choice's
        with pytest.raises(ValidationError):
            Settings()
        return
    assert Settings().engine_config() == EngineConfig(admission=value)  # type: ignore[arg-type]


def test_a_bad_admission_rule_fails_fast_naming_the_variable_and_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAFOCUS_ADMISSION", "greedy")
    with pytest.raises(StartupError) as refused:
        load_settings({})
    assert str(refused.value) == "invalid settings: ADAFOCUS_ADMISSION: Input should be 'cost' or 'eager'"
