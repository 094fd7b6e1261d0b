"""What the machine's power settings and energy counters say, where they can be read without
privileges: Jetson power modes, clocks and power rails, NVIDIA GPUs through NVML, Intel CPUs
through RAPL.
Every reader is best effort; what cannot be read is left out rather than guessed."""

from __future__ import annotations

import glob
import shutil
import subprocess
from pathlib import Path
from typing import Any

RAPL_ENERGY = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
# Jetson power monitors (INA3221): one hwmon folder with in<N>_label, in<N>_input (mV), curr<N>_input (mA).
JETSON_HWMON = "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
SAMPLE_SECONDS = 0.01


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def power_state() -> dict[str, Any]:
    """Power mode and clocks, as far as this machine exposes them."""
    state: dict[str, Any] = {}
    governor = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
    if governor:
        state["cpu_governor"] = governor
    frequency = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    if frequency:
        state["cpu0_mhz"] = int(frequency) // 1000
    if shutil.which("nvpmodel"):  # Jetson: the power mode decides clocks and active cores
        done = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=10)
        if done.returncode == 0:
            state["nvpmodel"] = " ".join(done.stdout.split())
    for devfreq in glob.glob("/sys/devices/platform/*gpu*/devfreq/*/cur_freq") + glob.glob(
            "/sys/devices/gpu.0/devfreq/*/cur_freq"):
        value = _read(devfreq)
        if value:
            state["gpu_mhz"] = int(value) // 1_000_000
            break
    nvml = nvml_handle()
    if nvml:
        pynvml, handle = nvml
        state["gpu_sm_mhz"] = pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM)
        state["gpu_power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000
    return state


def nvml_handle():
    """(pynvml, the handle of GPU 0), or None where NVML cannot be used."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
    except Exception:  # noqa: BLE001 - no NVML library, no driver or no GPU: nothing to read
        return None


def jetson_rails(pattern: str = JETSON_HWMON) -> dict[str, tuple[Path, Path]]:
    """Power rails of a Jetson: label -> (voltage file, current file). The module's input rail
    (VDD_IN) alone where it is monitored, else every rail."""
    rails = {}
    for folder in map(Path, glob.glob(pattern)):
        for label_file in folder.glob("in*_label"):
            index = label_file.name[2:-len("_label")]
            voltage, current = folder / f"in{index}_input", folder / f"curr{index}_input"
            if voltage.is_file() and current.is_file():
                rails[label_file.read_text().strip()] = (voltage, current)
    return {"VDD_IN": rails["VDD_IN"]} if "VDD_IN" in rails else rails


class RailSampler:
    """Integrates a Jetson's rail power (what tegrastats shows) over time, sampled in a thread."""

    def __init__(self, rails: dict[str, tuple[Path, Path]]) -> None:
        import threading

        self.rails, self.joules = rails, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def watts(self) -> float:
        return sum(int(v.read_text()) * int(c.read_text()) for v, c in self.rails.values()) / 1e6

    def _run(self) -> None:
        import time

        last, power = time.perf_counter(), self.watts()
        while not self._stop.wait(SAMPLE_SECONDS):
            now, current = time.perf_counter(), self.watts()
            self.joules += 0.5 * (power + current) * (now - last)
            last, power = now, current

    def start(self) -> "RailSampler":
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.joules


class EnergyMeter:
    """Energy used between enter and exit by the device that runs the model: the GPU's NVML counter
    for "cuda", the CPU package's RAPL counter for "cpu"; ``joules`` stays None where it cannot be
    read. Both counters cover the whole chip, idle draw included."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.joules: float | None = None
        self.source: str | None = None
        self._read = None

    def __enter__(self) -> "EnergyMeter":
        nvml = nvml_handle() if self.device == "cuda" else None
        if nvml:
            pynvml, handle = nvml
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                self._read, self.source = (lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3,
                                           "NVML (whole GPU)")
            except Exception:  # noqa: BLE001 - older GPUs have no energy counter
                pass
        if self.device == "cpu" and _read(str(RAPL_ENERGY)) is not None:
            self._read, self.source = (lambda: int(RAPL_ENERGY.read_text()) / 1e6, "RAPL (whole CPU package)")
        self._sampler = None
        if self._read is None and (rails := jetson_rails()):
            # A Jetson has no NVML energy counter: integrate its power monitors instead.
            self._sampler, self.source = RailSampler(rails).start(), f"Jetson rails ({', '.join(rails)})"
        self._start = self._read() if self._read else None
        return self

    def __exit__(self, *exc) -> None:
        if self._sampler is not None:
            self.joules = self._sampler.stop()
        elif self._read is not None and self._start is not None:
            used = self._read() - self._start
            self.joules = used if used >= 0 else None  # a wrapped counter gives no figure
