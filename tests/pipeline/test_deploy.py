import json

from pipeline.deploy import _remove_earlier_deploy


def test_deploying_again_removes_only_what_the_earlier_deploy_listed_inside_its_folder(tmp_path):
    folder, outside = tmp_path / "deployed", tmp_path / "precious.txt"
    (folder / "tensorrt_provider_cache").mkdir(parents=True)
    for name in ("model.int8.onnx", "tensorrt_provider_cache/a.engine", "notes.txt"):
        (folder / name).write_text(name)
    outside.write_text("not deploy's")
    files = {name: {} for name in ("model.int8.onnx", "tensorrt_provider_cache/a.engine", "../precious.txt")}
    (folder / "deploy.json").write_text(json.dumps({"file": "model.int8.onnx", "files": files}))
    _remove_earlier_deploy(folder)
    # The emptied cache folder goes too; a name leading outside the folder is not followed.
    assert sorted(p.name for p in folder.iterdir()) == ["deploy.json", "notes.txt"] and outside.is_file()


def test_a_folder_whose_deploy_json_is_unreadable_is_left_as_it_is(tmp_path):
    (tmp_path / "deploy.json").write_text("{cut sh")
    (tmp_path / "model.fp32.onnx").write_text("x")
    _remove_earlier_deploy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deploy.json", "model.fp32.onnx"]


def test_the_model_card_gives_an_imported_teacher_no_recipe_and_a_trained_model_its_own():
    from pipeline.deploy import _recipe
    from pipeline.plan import Task
    from stages.common.config import StudentConfig, TeacherConfig, TrainingConfig

    imported = Task("teacher", "teacher", {"seed": 0, "teacher": TeacherConfig(checkpoint="/weights/teacher.pt")})
    assert _recipe(imported, {"device": "cpu"}) == "imported, not trained by this pipeline"
    step = TrainingConfig(epochs=1, lr_milestones=(), warmup_epochs=0.5)
    student = Task("distill", "student", {"seed": 2, "student": StudentConfig(training=step)})
    assert _recipe(student, None) == "1 epoch, batch 128, SGD lr 0.1 (constant, warm-up 0.5 epochs), seed 2"
    recorded = {"device": "cuda:0", "images": {"train": 50000, "test": 10000, "classes": 100},
                "as_run": {"precision": "bf16", "processes": 1, "compiled": True, "captured_step": False}}
    assert _recipe(student, recorded).endswith(", seed 2, on 50,000 training images, run in bf16, compiled on cuda:0")
