import pytest


def test_training_history_becomes_tensorboard_scalars(tmp_path):
    pytest.importorskip("tensorboard", reason="the tracking extra (tensorboard) is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from stages.training.tracking import write_tensorboard

    history = [{"epoch": 1, "loss": 2.0, "train_accuracy": 0.3, "test_accuracy": 0.25, "lr": 0.1},
               {"epoch": 2, "loss": 1.5, "train_accuracy": 0.5, "test_accuracy": 0.4, "lr": 0.1}]
    assert write_tensorboard(history, tmp_path, "kd")
    events = EventAccumulator(str(tmp_path / "tensorboard" / "kd"))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"loss", "train_accuracy", "test_accuracy", "lr"}
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("test_accuracy")] == [(1, 0.25), (2, 0.4)]


def test_without_tensorboard_nothing_is_written(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    from stages.training.tracking import write_tensorboard

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert not write_tensorboard([{"epoch": 1, "loss": 1.0}], tmp_path, "kd")
    assert not (tmp_path / "tensorboard").exists()
