"""How each reported model was made, as its training task recorded it: seed, data, network, schedule
and method settings, and what the machine chose where the recipe left it open. Every comparison in
the report, for the method or against it, rests on these, so the report states them."""

from __future__ import annotations

from typing import Any

from stages.reporting.names import PLAIN, model_label, teacher_reading

SCHEDULE_KEYS = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_schedule", "lr_milestones",
                 "lr_gamma", "warmup_epochs")


def model_recipe(config: dict[str, Any], artifact_metrics: dict[str, Any], arch: str) -> dict[str, Any]:
    """One model's recipe from its training task's keyed config and its artifact's metrics (for a
    DML peer, the artifact of every peer trained together)."""
    sections = {name: dict(values) for name, values in config.items() if isinstance(values, dict) and name != "data"}
    training = None
    for values in sections.values():
        values.pop("arch", None)
        training = values.pop("training", None) or training
    recipe = {"seed": config.get("seed"), "data": config.get("data", {}), "network": arch,
              "training": training, "settings": {name: values for name, values in sections.items() if values}}
    for key in ("device", "as_run", "images", "imported"):
        if key in artifact_metrics:
            recipe[key] = artifact_metrics[key]
    return recipe


def recipes_of(artifacts: dict[str, Any], metrics: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every model's recipe from its training artifact (a StageInput) and its own metrics (a DML
    peer's, inside the artifact it shares)."""
    recipes = {model: model_recipe(artifact.manifest.get("config", {}), artifact.metrics, metrics[model]["arch"])
               for model, artifact in artifacts.items()}
    name_teaching_survival(recipes)
    return recipes


def name_teaching_survival(recipes: dict[str, dict[str, Any]]) -> None:
    """A distill recipe without ``p_last`` teaches at its teacher's trained p_n: name that value, so
    that a stochastic KD row says at what survival its teacher sampled."""
    for model, recipe in recipes.items():
        distill = recipe["settings"].get("distill")
        reading = teacher_reading(model)
        teacher = recipes.get(f"{PLAIN if reading == 'plain' else ''}teacher", {}).get("settings", {}).get("teacher")
        if distill is not None and "p_last" not in distill and teacher and "p_last" in teacher:
            distill["p_last"] = teacher["p_last"]


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "…"  # a content hash: report.json keeps it whole
    if isinstance(value, (list, tuple)):
        return " + ".join(map(_value, value)) if value and isinstance(value[0], str) else ", ".join(map(_value, value))
    return str(value)


def _settings(groups: dict[str, dict[str, Any]]) -> str:
    return "; ".join(f"{name}: " + ", ".join(f"{k} {_value(v)}" for k, v in values.items())
                     for name, values in groups.items())


def schedule(training: dict[str, Any]) -> str:
    """The LR schedule in words: cosine, constant, or its steps; with the warm-up."""
    if training.get("lr_schedule") == "cosine":
        text = "cosine"
    elif training.get("lr_milestones"):
        text = f"×{_value(training.get('lr_gamma', 0.1))} at epochs {_value(training['lr_milestones'])}"
    else:
        text = "constant"
    if training.get("warmup_epochs"):
        text += f", warm-up {_value(training['warmup_epochs'])} epochs"
    return text


def as_run(recipe: dict[str, Any]) -> str:
    """What the machine chose: precision, compilation, capture, processes, and the device it trained on."""
    chosen = recipe.get("as_run")
    if not chosen:
        return recipe.get("device", "–")
    parts = [chosen["precision"]]
    parts += [word for word, on in (("compiled", chosen.get("compiled")),
                                    ("captured step", chosen.get("captured_step")),
                                    ("blocks dropped by masks", chosen.get("drop_execution") == "mask")) if on]
    if chosen.get("processes", 1) > 1:
        parts.append(f"{chosen['processes']} processes")
    named = f" ({chosen['device_name']})" if chosen.get("device_name") else ""
    return ", ".join(parts) + f" on {recipe.get('device', '?')}{named}"


def describe_data(data: dict[str, Any], images: dict[str, int] | None) -> str:
    """The dataset, its content's identity, the splits as used and the augmentation, in one line."""
    content = str(data.get("content", ""))
    kind, _, digest = content.partition(":")
    identity = f"{kind} {digest[:12]}" if digest else content
    text = f"{data.get('dataset', '?')}" + (f" ({identity})" if identity else "")
    chosen = [f"{key} {', '.join(data[key]) if isinstance(data[key], list) else data[key]}"
              for key in ("classes", "image_size", "input_size", "crop_pct", "interpolation", "train_images",
                          "validation_images", "test_images") if data.get(key) is not None]
    if chosen:
        text += f", {', '.join(chosen)}"
    if images:
        held = f", {images['validation']:,} validation" if "validation" in images else ""
        text += f"; {images['train']:,} training{held} and {images['test']:,} test images of {images['classes']} classes"
        if images.get("notes"):
            text += f" ({'; '.join(images['notes'])})"
    augmentation = data.get("augmentation")
    if augmentation:
        text += "; augmentation: " + ", ".join(f"{k} {_value(v)}" for k, v in augmentation.items())
    return text


def render_recipes(recipes: dict[str, dict[str, Any]], scope: str = "") -> list[str]:
    """The report's Recipe section: the seed and data once for the models that share them, then one
    row per model. ``scope``, a sentence after the first, says whose recipes they are."""
    if not recipes:
        return []
    groups: dict[tuple[Any, str], list[str]] = {}
    for model, recipe in recipes.items():
        groups.setdefault((recipe["seed"], repr(recipe["data"])), []).append(model)
    lines = ["", "## Recipe", "", "Each model as its training task recorded it; settings left at their defaults are "
             "included. As run: what the machine chose where the recipe leaves it open." + scope, ""]
    for (seed, _), models in groups.items():
        images = next((recipes[m]["images"] for m in models if "images" in recipes[m]), None)
        whom = "every model" if len(groups) == 1 else ", ".join(model_label(m) for m in models)
        lines.append(f"- Seed {seed}, {whom}: {describe_data(recipes[models[0]]['data'], images)}.")
    lines += ["", "| model | network | epochs | batch | LR | schedule | momentum | weight decay | as run | settings |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for model, recipe in recipes.items():
        training = recipe["training"]
        if training:
            extra = {k: v for k, v in training.items() if k not in SCHEDULE_KEYS}
            cells = [training["epochs"], training["batch_size"], _value(training["lr"]), schedule(training),
                     _value(training["momentum"]), _value(training["weight_decay"])]
            settings = {**recipe["settings"], **({"training": extra} if extra else {})}
        else:
            cells = ["–"] * 6
            settings = recipe["settings"]
        described = _settings(settings) or "–"
        if "imported" in recipe:
            described = f"imported from {recipe['imported']['path']}; {described}"
        lines.append(f"| {model_label(model)} | {recipe['network']} | " + " | ".join(map(str, cells))
                     + f" | {as_run(recipe)} | {described} |")
    return lines
