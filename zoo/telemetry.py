"""GPU telemetry and power caps through NVML (nvidia-ml-py's ``pynvml``).

Without a GPU or NVML measuring is a quiet no-op (one debug line); a power cap that
cannot be applied is not (see GpuMeter).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["GpuMeter", "Reading", "device_uuid", "nvml_device", "nvml_release"]

log = logging.getLogger(__name__)
# Where the processes capping one GPU record its limit from before the first of them and
# who holds the cap (sweep workers sharing a GPU): the last to leave restores it.
LEASES = Path(tempfile.gettempdir())


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


_UNAPPLIED: set[float] = set()  # power caps this process has warned it could not apply


def _open(device_index: int | None) -> tuple[Any, Any] | str:
    """(pynvml module, device handle) of CUDA device ``device_index``, or why there is none."""
    if device_index is None:
        return "no CUDA device"
    try:
        import pynvml

        uuid = device_uuid(device_index)
        pynvml.nvmlInit()
    except Exception as error:  # NVML missing or broken
        return f"NVML unavailable ({error})"
    try:
        return pynvml, pynvml.nvmlDeviceGetHandleByUUID(uuid)
    except Exception as error:
        pynvml.nvmlShutdown()
        return f"no NVML device {uuid} ({error})"


def nvml_device(device_index: int | None) -> tuple[Any, Any] | None:
    """(pynvml module, device handle) of CUDA device ``device_index``, found by its UUID
    (never by NVML's own index, which ignores CUDA_VISIBLE_DEVICES); None without a device
    or a working NVML (logged at debug level). Each success holds one nvmlInit: release it
    with nvml_release."""
    opened = _open(device_index)
    if isinstance(opened, str):
        _skipped(opened)
        return None
    return opened


def _skipped(why: str, power_cap_w: float | None = None) -> None:
    """Say that nothing is measured, and why: at debug level, but as a warning (once per
    process and cap) when that leaves ``power_cap_w`` unapplied."""
    if power_cap_w is None:
        log.debug("%s: GPU telemetry skipped", why)
    elif power_cap_w not in _UNAPPLIED:
        _UNAPPLIED.add(power_cap_w)
        log.warning(
            "GPU power cap of %g W not applied (%s): the power limit in force is unknown",
            power_cap_w,
            why,
        )


def nvml_release(nvml: Any) -> None:
    """Undo the nvmlInit of one nvml_device call."""
    try:
        nvml.nvmlShutdown()
    except Exception as error:
        log.debug("nvmlShutdown failed (%s)", error)


class GpuMeter:
    """Context manager measuring CUDA device ``device_index`` while a stage trains: its
    ``reading`` is complete on exit, energy as the difference of NVML's energy counter.

    With ``power_cap_w`` the GPU's power limit is set to the cap on entry and the previous
    limit restored on exit, however the block ends (an exception; SIGTERM too, once
    zoo._signals makes it a KeyboardInterrupt); of processes capping one
    GPU at once (workers sharing it) the last restores the limit from before the first,
    recorded in a lease file under LEASES. ``reading.power_limit_w``
    is then the limit in force: the cap, or the old limit when setting it fails (no root:
    one warning). Without NVML or a CUDA device nothing is measured and the limit in
    force is unknown: ``power_limit_w`` stays None, one warning per process names the
    cap and why it was not applied, and zoo.run tags the run ``zoo.power_limit_w:
    unknown``."""

    def __init__(
        self, device_index: int | None, power_cap_w: float | None = None, interval_s: float = 0.5
    ):
        self.reading = Reading()
        self._stop = threading.Event()
        self._interval = interval_s
        self._cap, self._device_index = power_cap_w, device_index
        opened = _open(device_index)
        if isinstance(opened, str):
            _skipped(opened, power_cap_w)
            opened = (None, None)
        self._nvml, self._handle = opened

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
        self._lease = None
        if self._cap is not None:
            self._lease = self._hold_cap(int(self._cap * 1000))
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
        if self._lease is not None:  # the last holder leaves the GPU as it was found
            self._release_cap(self._lease)
        nvml_release(self._nvml)

    def _hold_cap(self, milliwatts: int) -> Path | None:
        """Set the cap and join its holders; the lease file, or None when not set. The
        limit from before the first holder is kept for the last one to restore."""
        lease = LEASES / f"zoo-power-{device_uuid(self._device_index)}.json"
        with FileLock(f"{lease}.lock"):
            state = _lease_state(lease)  # a holder killed outright left its lease behind
            if state["before"] is None:
                state["before"] = self._nvml.nvmlDeviceGetPowerManagementLimit(self._handle)
            if not self._set_cap(milliwatts):
                return None
            state["holders"].append(os.getpid())
            lease.write_text(json.dumps(state))
        return lease

    def _release_cap(self, lease: Path) -> None:
        with FileLock(f"{lease}.lock"):
            state = _lease_state(lease)
            if os.getpid() in state["holders"]:
                state["holders"].remove(os.getpid())
            if state["holders"]:
                lease.write_text(json.dumps(state))
                return
            if state.get("before") is not None:
                self._set_cap(state["before"])
            lease.unlink(missing_ok=True)


def _lease_state(lease: Path) -> dict[str, Any]:
    """A GPU's cap lease: the limit before it (milliwatts) and the live holders' pids."""
    try:
        state = json.loads(lease.read_text())
    except (OSError, ValueError):
        state = {}
    holders = [pid for pid in state.get("holders", []) if _alive(pid)]
    return {"before": state.get("before"), "holders": holders}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
