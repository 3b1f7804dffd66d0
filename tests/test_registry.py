import pytest

from trilemma import registry


def test_kinds_are_populated():
    assert {"vqvae", "patch"} <= set(registry.names("tokenizer"))
    assert {"vq", "rvq", "fsq", "lfq", "none"} <= set(registry.names("quantizer"))
    assert "vq-f4-shapes" in registry.preset_names("tokenizer")


def test_unknown_name_lists_known_names():
    with pytest.raises(registry.RegistryError) as err:
        registry.build("tokenizer", "no-such-tokenizer")
    message = str(err.value)
    assert "no-such-tokenizer" in message and "vqvae" in message and "vq-f4-shapes" in message
    with pytest.raises(registry.RegistryError, match="known kinds"):
        registry.names("widgets")


def test_preset_overrides_are_config_fields():
    tok = registry.build("tokenizer", "patch4-8bit", image_size=16)
    assert tok.config.image_size == 16 and tok.config.patch == 4 and tok.config.bits == 8
    with pytest.raises(TypeError):
        registry.build("tokenizer", "patch", no_such_field=1)


@pytest.mark.parametrize("name", registry.preset_names("tokenizer"))
def test_every_tokenizer_preset_names_its_quantizer_and_factor(name):
    preset = registry.get_preset("tokenizer", name)
    if preset.model == "vqvae":
        qname = preset.config.quantizer["name"]
        assert name.split("-")[0] in {"vq": ["vq"], "rvq": ["rvq"], "fsq": ["fsq"], "lfq": ["lfq"], "none": ["ae"]}[qname]
        assert f"-f{preset.config.factor}-" in name


def test_a_preset_recipe_names_only_training_flags():
    with pytest.raises(registry.RegistryError, match="recipe fields \\['momentum'\\]"):
        registry.register_preset("tokenizer", "recipe-check", "vqvae", recipe={"lr": 1e-3, "momentum": 0.9})
    assert "recipe-check" not in registry.preset_names("tokenizer")
