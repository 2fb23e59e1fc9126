"""GPU telemetry and power caps through NVML (nvidia-ml-py's ``pynvml``).

Without a GPU or NVML everything here is a quiet no-op (one debug line).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

__all__ = ["GpuMeter", "Reading", "device_uuid", "nvml_device", "nvml_release"]

log = logging.getLogger(__name__)


@dataclass
class Reading:
    energy_wh: float | None = None  # from the total-energy counter
    mean_power_w: float | None = None
    mean_utilisation: float | None = None  # percent
    peak_memory_gb: float | None = None
    power_limit_w: float | None = None  # the limit in force while measuring

    def metrics(self, prefix: str) -> dict[str, float]:
        """Non-empty readings as metric name -> value, names prefixed."""
        values = {
            "energy_wh": self.energy_wh,
            "mean_power_w": self.mean_power_w,
            "gpu_utilisation": self.mean_utilisation,
            "peak_memory_gb": self.peak_memory_gb,
            "power_limit_w": self.power_limit_w,
        }
        return {f"{prefix}{k}": v for k, v in values.items() if v is not None}


def device_uuid(device_index: int) -> str:
    """NVML's UUID (``GPU-...``) of CUDA device ``device_index`` as this process numbers
    it: the same physical GPU whatever CUDA_VISIBLE_DEVICES and device ordering say."""
    import torch

    uuid = str(torch.cuda.get_device_properties(device_index).uuid)
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def nvml_device(device_index: int | None) -> tuple[Any, Any] | None:
    """(pynvml module, device handle) of CUDA device ``device_index``, found by its UUID
    (never by NVML's own index, which ignores CUDA_VISIBLE_DEVICES); None without a device
    or a working NVML (logged at debug level). Each success holds one nvmlInit: release it
    with nvml_release."""
    if device_index is None:
        log.debug("no CUDA device: GPU telemetry skipped")
        return None
    try:
        import pynvml

        uuid = device_uuid(device_index)
        pynvml.nvmlInit()
    except Exception as error:  # NVML missing or broken: skip quietly
        log.debug("NVML unavailable (%s): GPU telemetry skipped", error)
        return None
    try:
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception as error:
        log.debug("no NVML device %s (%s): GPU telemetry skipped", uuid, error)
        pynvml.nvmlShutdown()
        return None


def nvml_release(nvml: Any) -> None:
    """Undo the nvmlInit of one nvml_device call."""
    try:
        nvml.nvmlShutdown()
    except Exception as error:
        log.debug("nvmlShutdown failed (%s)", error)


class GpuMeter:
    """Context manager measuring one GPU while a stage trains; optionally caps its power
    for that time and restores the previous limit afterwards."""

    def __init__(
        self, device_index: int | None, power_cap_w: float | None = None, interval_s: float = 0.5
    ):
        self.reading = Reading()
        self._stop = threading.Event()
        self._interval = interval_s
        self._cap = power_cap_w
        self._nvml, self._handle = nvml_device(device_index) or (None, None)

    def _set_cap(self, milliwatts: int) -> bool:
        try:
            self._nvml.nvmlDeviceSetPowerManagementLimit(self._handle, milliwatts)
        except Exception as error:  # needs root: report the limit in force
            log.warning("could not set GPU power limit to %s W (%s)", milliwatts / 1000, error)
            return False
        return True

    def _sample(self) -> None:
        nvml, handle = self._nvml, self._handle
        power, utilisation, memory = [], [], []
        while not self._stop.wait(self._interval):
            power.append(nvml.nvmlDeviceGetPowerUsage(handle) / 1000)
            utilisation.append(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            memory.append(nvml.nvmlDeviceGetMemoryInfo(handle).used / 1e9)
        if power:
            self.reading.mean_power_w = sum(power) / len(power)
            self.reading.mean_utilisation = sum(utilisation) / len(utilisation)
            self.reading.peak_memory_gb = max(memory)

    def __enter__(self) -> GpuMeter:
        if self._handle is None:
            return self
        self._previous_cap = None
        if self._cap is not None:
            previous = self._nvml.nvmlDeviceGetPowerManagementLimit(self._handle)
            if self._set_cap(int(self._cap * 1000)):
                self._previous_cap = previous
            limit = self._nvml.nvmlDeviceGetEnforcedPowerLimit(self._handle)
            self.reading.power_limit_w = limit / 1000  # the limit in force, set or not
        self._start_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is None:
            return
        self._stop.set()
        self._thread.join()
        used_mj = self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start_mj
        self.reading.energy_wh = used_mj / 3.6e6
        if self._previous_cap is not None:  # leave the GPU as it was found
            self._set_cap(self._previous_cap)
        nvml_release(self._nvml)
