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
