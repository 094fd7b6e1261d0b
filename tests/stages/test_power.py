import time

import pytest

from stages.power import EnergyMeter, RailSampler, jetson_rails


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
    monkeypatch.setattr("stages.power.jetson_rails", lambda: {})
    monkeypatch.setattr("stages.power.RAPL_ENERGY", __import__("pathlib").Path("/nonexistent/energy_uj"))
    with EnergyMeter("cpu") as meter:
        pass
    assert meter.joules is None and meter.source is None


def test_a_busy_neighbour_shows_in_the_machine_load():
    import subprocess
    import sys
    import time

    from stages.benchmark_worker import MachineLoad

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        with MachineLoad() as load:
            time.sleep(1.0)
    finally:
        busy.kill()
        busy.wait()
    assert load.share is not None and load.share > 0.10  # one of this machine's cores, or more


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
