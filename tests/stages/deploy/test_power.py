import time

import pytest

from stages.deploy.power import EnergyMeter, RailSampler, jetson_rails


def fake_hwmon(root, rails):
    folder = root / "1-0040" / "hwmon" / "hwmon3"
    folder.mkdir(parents=True)
    for index, (label, millivolts, milliamps) in enumerate(rails, start=1):
        (folder / f"in{index}_label").write_text(label + "\n")
        (folder / f"in{index}_input").write_text(f"{millivolts}\n")
        (folder / f"curr{index}_input").write_text(f"{milliamps}\n")
    return str(root / "*" / "hwmon" / "hwmon*")


def test_jetson_rails_prefer_the_module_input(tmp_path):
    pattern = fake_hwmon(tmp_path, [("VDD_IN", 5000, 1000), ("VDD_CPU_GPU_CV", 5000, 400)])
    assert list(jetson_rails(pattern)) == ["VDD_IN"]


def test_rail_sampler_integrates_power_over_time(tmp_path):
    # Two rails, 5 V x 1 A + 5 V x 0.4 A = 7 W, held for about 0.2 s.
    pattern = fake_hwmon(tmp_path, [("VDD_GPU_SOC", 5000, 1000), ("VDD_CPU_CV", 5000, 400)])
    sampler = RailSampler(jetson_rails(pattern))
    assert sampler.watts() == 7.0
    start = time.perf_counter()
    sampler.start()
    time.sleep(0.2)
    joules = sampler.stop()
    assert 7.0 * 0.15 < joules <= 7.0 * (time.perf_counter() - start)


def test_energy_meter_reads_nothing_it_cannot(monkeypatch):
    monkeypatch.setattr("stages.deploy.power.jetson_rails", lambda: {})
    monkeypatch.setattr("stages.deploy.power.RAPL_ENERGY", __import__("pathlib").Path("/nonexistent/energy_uj"))
    with EnergyMeter("cpu") as meter:
        pass
    assert meter.joules is None and meter.source is None


def test_a_busy_neighbour_shows_in_the_machine_load():
    import subprocess
    import sys
    import time

    from stages.deploy.benchmark_worker import MachineLoad

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with MachineLoad() as load:
            time.sleep(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert load.share is not None and load.share > 0.10  # one of this machine's cores, or more


def test_a_timing_shorter_than_a_clock_tick_is_not_read_as_a_neighbour():
    """Windows of a few milliseconds, each CPU's /proc/stat count a tick (10 ms) either side of the
    truth: read plainly, one tick in 8 ms is 60 % of two cores or more. No CPU can be charged two
    ticks in a window shorter than one, so nothing here is beyond the rounding."""
    import os
    import time

    import numpy as np

    from stages.deploy.benchmark_worker import MachineLoad

    if len(os.sched_getaffinity(0)) != os.cpu_count():
        pytest.skip("this process may not run on every CPU, and the others' ticks are not bounded by its own")
    matrix = np.random.default_rng(0).random((200, 200))
    shares = []
    for _ in range(20):
        with MachineLoad() as load:
            end = time.perf_counter() + 0.008
            while time.perf_counter() < end:
                matrix @ matrix
        shares.append(load.share)
    assert shares == [0.0] * 20


@pytest.mark.parametrize("shares, reruns", [([0.6, 0.02], 1), ([0.02], 0), ([0.6, 0.5], 1)])
def test_a_disturbed_benchmark_is_rerun_once(monkeypatch, tmp_path, shares, reruns):
    import stages.benchmark as benchmark

    calls = []

    def worker(spec, scratch, label):
        calls.append(label)
        return {"latency": [{"other_cpu_share": shares[len(calls) - 1]}]}

    monkeypatch.setattr(benchmark, "run_worker", worker)
    result = benchmark.measured_undisturbed({}, tmp_path, "kd-onnxruntime-int8")
    assert len(calls) == 1 + reruns and result.get("rerun", False) == bool(reruns)
    assert benchmark.disturbed(result) == (shares[-1] > benchmark.DISTURBED_SHARE)


def fake_pynvml(samples=None, error=None):
    """NVML's Python bindings as far as the GPU load reads them: the real names, samples with the
    fields of nvmlProcessUtilizationSample_t, and NVMLError_NotFound where nothing was sampled."""
    import types

    module = types.ModuleType("pynvml")

    class NVMLError(Exception):
        pass

    class NVMLError_NotFound(NVMLError):  # noqa: N801 (pynvml's own name)
        pass

    module.NVMLError, module.NVMLError_NotFound = NVMLError, NVMLError_NotFound
    module.nvmlInit = lambda: None
    module.nvmlDeviceGetHandleByIndex = lambda index: ("gpu", index)

    def utilisation(handle, last_seen_timestamp):
        assert handle == ("gpu", 0) and isinstance(last_seen_timestamp, int)
        if error:
            raise getattr(module, error)()
        return [types.SimpleNamespace(pid=pid, timeStamp=stamp, smUtil=sm, memUtil=0, encUtil=0, decUtil=0)
                for pid, stamp, sm in samples]

    module.nvmlDeviceGetProcessUtilization = utilisation
    return module


def test_other_processes_on_the_gpu_show_in_the_machine_load(monkeypatch):
    import os
    import sys

    from stages.benchmark import disturbed_row
    from stages.deploy.benchmark_worker import other_gpu_share

    since = 1_000_000
    samples = [(os.getpid(), since + 10, 95),  # this process: not a neighbour
               (4242, since + 20, 30), (4242, since + 40, 50),  # a neighbour at 40 % on average
               (5151, since - 5, 100)]  # sampled before the measurement began
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(samples))
    assert other_gpu_share(since) == pytest.approx(0.40)
    assert disturbed_row({"other_cpu_share": 0.01, "other_gpu_share": 0.40})
    assert not disturbed_row({"other_cpu_share": 0.01, "other_gpu_share": 0.05})
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(error="NVMLError_NotFound"))
    assert other_gpu_share(since) == 0.0  # nothing sampled busy meanwhile
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(error="NVMLError"))
    assert other_gpu_share(since) is None  # not supported: no figure rather than a wrong one
