import time

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
