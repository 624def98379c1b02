"""Tier 2: what a hostile workflow can make the pack read, and which inputs every node refuses by itself.

Files: only names a model folder lists, resolved inside that folder's configured directories (links out
refused), with one refusal whatever exists at the name; image folders only inside ComfyUI's input folder.
Inputs: every GuideKit node refuses non-finite and out-of-range numbers and unknown combo values, naming
itself and the input, before it touches a model (the host does not check all of these).
"""
from __future__ import annotations

import math
import time

import pytest
import torch

pytestmark = pytest.mark.host


@pytest.fixture(scope="module")
def files(comfy):
    from guidekit.nodes import files
    return files


@pytest.fixture
def folder(tmp_path, comfy):
    """A model folder 'guidekit_fuzz' with one real file, one link out and a secret file beside the folder."""
    import folder_paths
    root = tmp_path / "models" / "guidekit_fuzz"
    (root / "sub").mkdir(parents=True)
    (root / "good.safetensors").write_bytes(b"x")
    (root / "sub" / "nested.safetensors").write_bytes(b"x")
    secret = tmp_path / "secret.safetensors"
    secret.write_bytes(b"x")
    (root / "link-out.safetensors").symlink_to(secret)
    saved = folder_paths.folder_names_and_paths.get("guidekit_fuzz")
    folder_paths.folder_names_and_paths["guidekit_fuzz"] = ([str(root)], {".safetensors"})
    yield root, secret
    if saved is None:
        folder_paths.folder_names_and_paths.pop("guidekit_fuzz", None)
    else:
        folder_paths.folder_names_and_paths["guidekit_fuzz"] = saved


def refusal(files, name):
    with pytest.raises(ValueError) as err:
        files.model_file("guidekit_fuzz", name, "Node", "input")
    return str(err.value).replace(repr(name), "NAME")


def test_model_files_resolve_inside_their_folder_only(files, folder):
    root, secret = folder
    assert files.model_file("guidekit_fuzz", "good.safetensors", "Node", "input") == root / "good.safetensors"
    assert files.model_file("guidekit_fuzz", "sub/nested.safetensors", "Node", "input").is_file()
    messages = {name: refusal(files, name) for name in
                ("missing.safetensors", "link-out.safetensors", str(secret), "../secret.safetensors",
                 "../../../../../../etc/passwd", "/etc/passwd", "sub/../../secret.safetensors", "")}
    assert len(set(messages.values())) == 1, "a refusal must not tell what exists at the name"
    assert "Node: input 'input' = NAME is not a file of the 'guidekit_fuzz' model folder" in messages["/etc/passwd"]


def test_image_folders_only_inside_the_input_folder(files, tmp_path, monkeypatch):
    import folder_paths
    from PIL import Image
    inputs, outside = tmp_path / "input", tmp_path / "outside"
    (inputs / "real").mkdir(parents=True)
    outside.mkdir()
    Image.new("RGB", (4, 4)).save(inputs / "real" / "a.png")
    Image.new("RGB", (4, 4)).save(outside / "secret.png")
    (inputs / "real" / "linked.png").symlink_to(outside / "secret.png")
    (inputs / "link-out").symlink_to(outside, target_is_directory=True)
    monkeypatch.setattr(folder_paths, "get_input_directory", lambda: str(inputs))
    assert files.input_subfolder("real", "Node", "real_folder") == inputs / "real"
    assert files.files_inside(inputs / "real", {".png"}) == [inputs / "real" / "a.png"], "a file link out is skipped"
    messages = set()
    for text in (str(outside), "../outside", "link-out", "missing", "real/../../outside", "/etc", "."):
        if text == ".":
            continue
        with pytest.raises(ValueError) as err:
            files.input_subfolder(text, "Node", "real_folder")
        messages.add(str(err.value).replace(repr(text), "TEXT"))
    assert len(messages) == 1 and "is not a folder inside ComfyUI's input folder" in messages.pop()


def test_a_refiner_whose_metadata_asks_for_a_huge_network_is_refused_without_building_it(tmp_path):
    import json

    from safetensors.torch import save_file

    from guidekit.postprocess.refiner import load_refiner
    path = tmp_path / "huge.safetensors"
    save_file({"w": torch.zeros(1)}, str(path), {
        "guidekit.kind": "guidekit-flow-refiner", "guidekit.space": "latent", "guidekit.sample_shape": "[4, 8, 8]",
        "guidekit.architecture": json.dumps({"arch": "mlp", "dim": 10**6, "hidden": 10**6, "layers": 64})})
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="weights do not match the architecture in its metadata"):
        load_refiner(path)
    assert time.monotonic() - t0 < 5.0


# --- every node checks its own inputs ------------------------------------------------------------------

def widget_defaults(schema) -> dict:
    from comfy_api.latest import io
    values = {}
    for spec in schema.inputs:
        if isinstance(spec, (io.Float.Input, io.Int.Input, io.String.Input, io.Boolean.Input)):
            values[spec.id] = spec.default
        elif isinstance(spec, io.Combo.Input):
            values[spec.id] = spec.default if spec.default is not None else (spec.options or [None])[0]
        else:
            values[spec.id] = None                       # sockets: never reached, the check comes first
    return values


def bad_values(spec):
    from comfy_api.latest import io
    if isinstance(spec, io.Float.Input):
        return [math.nan, math.inf, -math.inf, "3", None if spec.max is None else spec.max * 2 + 1]
    if isinstance(spec, io.Int.Input):
        return [1.5, math.nan, None if spec.max is None else spec.max + 1, None if spec.min is None else spec.min - 1]
    if isinstance(spec, io.Combo.Input):
        return ["bogus", "/etc/passwd"]
    return []


def node_input_cases():
    from guidekit.cli.inprocess import import_comfy
    import_comfy()
    from guidekit.nodes import NODES
    cases = []
    for cls in NODES:
        schema = cls.define_schema()
        for spec in schema.inputs:
            for value in bad_values(spec):
                if value is not None:
                    cases.append(pytest.param(cls, spec.id, value, id=f"{schema.node_id}.{spec.id}={value!r}"))
    return cases


@pytest.mark.parametrize("cls,input_name,value", node_input_cases())
def test_every_node_refuses_bad_numbers_and_unknown_options_by_name(cls, input_name, value):
    schema = cls.define_schema()
    args = {**widget_defaults(schema), input_name: value}
    with pytest.raises(ValueError) as err:
        cls.execute(**args)
    assert str(err.value).startswith(f"{schema.display_name}: input '{input_name}' = "), str(err.value)


def test_valid_defaults_pass_the_check(comfy):
    """The check refuses only bad values: every node's defaults pass it (the call then fails on the missing
    sockets, not on a widget)."""
    from guidekit.nodes import NODES
    from guidekit.nodes.validation import check_inputs
    for cls in NODES:
        schema = cls.define_schema()
        check_inputs(schema, widget_defaults(schema))
