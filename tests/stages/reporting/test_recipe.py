from stages.reporting.recipe import model_recipe, name_teaching_survival, render_recipes

DATA = {"dataset": "cifar100", "train_images": 5000, "augmentation": {"crop_padding": 4, "horizontal_flip": True},
        "content": "npz:" + "ab" * 32}
STEP = {"epochs": 200, "batch_size": 128, "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0005,
        "lr_schedule": "step", "lr_milestones": [100, 150], "lr_gamma": 0.1, "warmup_epochs": 1.0,
        "precision": "bf16"}
ON_GPU = {"device": "cuda:0", "as_run": {"precision": "bf16", "processes": 2, "compiled": True,
                                         "captured_step": True, "drop_execution": "mask",
                                         "device_name": "NVIDIA H200"},
          "images": {"train": 5000, "test": 10000, "classes": 100}}


def distill_config(**distill):
    return {"seed": 3, "data": DATA, "student": {"arch": "resnet20", "training": STEP},
            "distill": {"transfer": "kd", "temperature": 4.0, "teacher_samples": 4, **distill}}


def test_a_recipe_keeps_the_keyed_settings_by_section_and_what_the_machine_chose():
    recipe = model_recipe(distill_config(), {"test_accuracy": 0.7, **ON_GPU}, "resnet20")
    assert recipe["seed"] == 3 and recipe["data"] == DATA and recipe["network"] == "resnet20"
    assert recipe["training"] == STEP
    assert recipe["settings"] == {"distill": {"transfer": "kd", "temperature": 4.0, "teacher_samples": 4}}
    assert recipe["as_run"]["processes"] == 2 and recipe["images"]["classes"] == 100
    assert "test_accuracy" not in recipe


def test_stochastic_kd_names_the_survival_its_teacher_sampled_at_for_each_reading():
    teacher = {"seed": 3, "data": DATA, "teacher": {"arch": "resnet110", "p_last": 0.5, "training": STEP}}
    plain = {**teacher, "teacher": {**teacher["teacher"], "p_last": 1.0}}
    recipes = {"teacher": model_recipe(teacher, {}, "resnet110"),
               "plain_teacher": model_recipe(plain, {}, "resnet110"),
               "stochastic_kd": model_recipe(distill_config(), {}, "resnet20"),
               "plain_stochastic_kd": model_recipe(distill_config(p_last=0.7), {}, "resnet20")}
    name_teaching_survival(recipes)
    assert recipes["stochastic_kd"]["settings"]["distill"]["p_last"] == 0.5
    assert recipes["plain_stochastic_kd"]["settings"]["distill"]["p_last"] == 0.7  # named by the profile: kept
    assert "p_last" not in recipes["teacher"]["settings"].get("distill", {})


def test_the_recipe_section_states_data_once_and_one_row_per_model():
    teacher = {"seed": 3, "data": DATA, "teacher": {"arch": "resnet110", "p_last": 0.5, "drop_mode": "batch",
                                                    "checkpoint_sha256": "cd" * 32}}
    imported = {"imported": {"path": "/weights/t.pt", "sha256": "cd" * 32}, "device": "cpu"}
    text = "\n".join(render_recipes({"teacher": model_recipe(teacher, imported, "resnet110"),
                                     "kd": model_recipe(distill_config(), ON_GPU, "resnet20")}))
    assert ("- Seed 3, every model: cifar100 (npz abababababab), train_images 5000; 5,000 training and 10,000 test "
            "images of 100 classes; augmentation: crop_padding 4, horizontal_flip true.") in text
    assert ("| teacher | resnet110 | – | – | – | – | – | – | cpu | imported from /weights/t.pt; teacher: p_last 0.5, "
            "drop_mode batch, checkpoint_sha256 cdcdcdcdcdcd… |") in text
    assert ("| KD | resnet20 | 200 | 128 | 0.1 | ×0.1 at epochs 100, 150, warm-up 1 epochs | 0.9 | 0.0005 | bf16, "
            "compiled, captured step, blocks dropped by masks, 2 processes on cuda:0 (NVIDIA H200) | distill: transfer kd, "
            "temperature 4, teacher_samples 4; training: precision bf16 |") in text


def test_models_with_other_seeds_or_data_get_a_line_each_and_old_artifacts_their_device_alone():
    recipes = {"student": model_recipe({**distill_config(), "seed": 1}, {"device": "cpu"}, "resnet20"),
               "kd": model_recipe(distill_config(), {"device": "cpu"}, "resnet20")}
    recipes["student"]["training"] = {**STEP, "lr_schedule": "step", "lr_milestones": [], "warmup_epochs": None}
    text = "\n".join(render_recipes(recipes))
    assert "- Seed 1, student alone: cifar100" in text and "- Seed 3, KD: cifar100" in text
    assert "| student alone | resnet20 | 200 | 128 | 0.1 | constant | 0.9 | 0.0005 | cpu |" in text
    assert render_recipes({}) == []


def test_a_subset_of_classes_is_part_of_the_datas_line():
    from stages.reporting.recipe import describe_data

    assert describe_data({**DATA, "classes": 10}, None).startswith(
        "cifar100 (npz abababababab), classes 10, train_images")
    assert ", classes apple, bee, " in describe_data({**DATA, "classes": ["apple", "bee"]}, None)
    assert "classes" not in describe_data({**DATA, "classes": None}, None)
