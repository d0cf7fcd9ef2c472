"""The engine's one configuration type, validated once; no torch, no numpy (the scheduler imports it).

``service.settings.Settings`` builds it from the environment by keyword (``Settings.engine_config``) and reports
its validation errors as settings errors; the engine and the scheduler take it as is. Its field defaults are the
server's defaults too: the settings read them from here (``service.settings.ENGINE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

EngineMode = Literal["continuous", "drain", "single"]
ENGINE_MODES: tuple[EngineMode, ...] = ("continuous", "drain", "single")
Backend = Literal["torch", "onnx", "auto"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "auto")
Stage = Literal["glance", "focus"]
# the PyTorch runner's compute dtype (service.engine.runners.torch_runner.TorchOptions)
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")
# continuous mode's admission rule (service.engine.admission): "cost" holds waiting requests while admitting them
# would cost the requests in flight more than it gains them (expected finish times from the measured step costs);
# "eager" admits as soon as the slot rule below allows
AdmissionRule = Literal["cost", "eager"]
ADMISSION_RULES: tuple[AdmissionRule, ...] = ("cost", "eager")


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    mode: EngineMode = "continuous"
    max_batch: int = 32  # max samples per model call, per stage (glance batch and focus batch)
    max_active: int = 64  # cap on admitted requests holding frames on the device (memory cap)
    max_queue: int = 256  # bounded admission queue; submit() beyond it raises QueueFull
    admission: AdmissionRule = "cost"  # continuous mode, on top of the slot rule below; ignored by drain and single
    # continuous mode: waiting requests are admitted (their glance runs) only when at least
    # min(min_glance_batch, number waiting) slots are free, OR when no request is active (the engine never idles
    # with work waiting); 1 = no floor (the admission rule alone decides). None = automatic: the knee of the glance cost
    # per video (service.engine.batch_costs; 1 until costs are measured), and the oldest waiting request waits at most
    # max_glance_wait_steps steps. Larger values trade a little queueing for cheaper-per-video glance batches.
    # Ignored by drain and single.
    min_glance_batch: int | None = 1
    max_glance_wait_steps: int = 4
    glance_batch_tolerance: float = 0.10  # automatic: cost per video within this of the best batch's
    # a request whose deadline comes within about one step and that had its glance leaves with its prediction so
    # far (exit reason "deadline") instead of failing with DeadlineExceeded; False: it fails at its deadline
    deadline_answers: bool = True
    # fairness (service.engine.fairness): one request group (the segments of one long video) holds at most this many
    # active slots, and the waiting groups are admitted round robin
    group_max_active: int = 16

    def __post_init__(self) -> None:
        if self.mode not in ENGINE_MODES:
            raise ValueError(f"unknown engine mode {self.mode!r}; choose one of {ENGINE_MODES}")
        if self.admission not in ADMISSION_RULES:
            raise ValueError(f"unknown admission rule {self.admission!r}; choose one of {ADMISSION_RULES}")
        for name in ("max_batch", "max_active", "max_queue", "max_glance_wait_steps", "group_max_active"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.min_glance_batch is not None and self.min_glance_batch < 1:
            raise ValueError(f"min_glance_batch must be >= 1 or None (automatic), got {self.min_glance_batch}")
        if not 0 <= self.glance_batch_tolerance < 1:
            raise ValueError(f"glance_batch_tolerance must be in [0, 1), got {self.glance_batch_tolerance}")
        if self.min_glance_batch is not None and self.min_glance_batch > self.max_batch:
            raise ValueError(f"min_glance_batch ({self.min_glance_batch}) must be <= max_batch ({self.max_batch})")
        if self.max_active < self.max_batch and self.mode != "single":
            raise ValueError(f"max_active ({self.max_active}) must be >= max_batch ({self.max_batch})")

    @property
    def batch_cap(self) -> int:
        """Samples per model call, per stage, in this mode."""
        return 1 if self.mode == "single" else self.max_batch

    @property
    def uses_costs(self) -> bool:
        """Whether ``plan`` reads the measured step costs (the engine then measures them at warm-up and online)."""
        return self.mode == "continuous" and (self.admission == "cost" or self.min_glance_batch is None)

    @property
    def active_cap(self) -> int:
        """Admitted requests at once, in this mode."""
        return 1 if self.mode == "single" else self.max_active
