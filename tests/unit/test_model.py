"""The model a user trains: any local backbone, three fusion heads, missing modalities handled."""

import pytest
import torch

from kubefusion import config as cfg
from kubefusion.errors import ModelSourceError
from kubefusion.model import build_from_info, build_model, load_model_from_checkpoint
from kubefusion.model.backbones import RANDOM_INIT_CONFIGS, load_backbone

B, T, F = 6, 12, 5


def tiny_spec(fusion="gated", modality_dropout=0.0):
    spec = cfg.demo().model
    spec.fusion = cfg.FusionConfig(type=fusion, hidden=32, dropout=0.0, modality_dropout=modality_dropout,
                                   layers=1, heads=4)
    spec.embed_dim = 16
    return spec


def inputs(seed=0, mask=None):
    g = torch.Generator().manual_seed(seed)
    return {
        "pixel_values": torch.randn(B, 3, 32, 32, generator=g),
        "input_ids": torch.randint(0, 30522, (B, T), generator=g),
        "attention_mask": torch.ones(B, T, dtype=torch.long),
        "numeric": torch.randn(B, F, generator=g),
        "modality_mask": torch.ones(B, 3, dtype=torch.bool) if mask is None else mask,
    }


@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_each_fusion_head_gives_finite_logits_and_ignores_masked_inputs(fusion):
    torch.manual_seed(0)
    model = build_model(tiny_spec(fusion), num_classes=4, num_numeric_features=F).eval()
    mask = torch.ones(B, 3, dtype=torch.bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = False  # one sample missing each modality
    mask[3] = torch.tensor([False, False, True])
    x = inputs(mask=mask)
    logits = model(**x)
    assert logits.shape == (B, 4) and torch.isfinite(logits).all()
    changed = {k: v.clone() for k, v in x.items()}
    changed["pixel_values"][0] += 5.0  # sample 0 has no image: its image must not matter
    changed["input_ids"][1] = 7  # sample 1 has no text
    changed["numeric"][2] = float("nan")  # sample 2 has no numeric row
    with torch.no_grad():
        again = model(**changed)
    assert torch.allclose(again[:3], logits[:3], atol=1e-5)


def test_missing_numeric_values_become_flags_not_nans():
    model = build_model(tiny_spec(), num_classes=3, num_numeric_features=F).eval()
    x = inputs()
    x["numeric"][:, 1] = float("nan")
    assert torch.isfinite(model(**x)).all()


def test_modality_dropout_never_drops_every_modality_of_a_sample():
    model = build_model(tiny_spec(modality_dropout=0.9), num_classes=3, num_numeric_features=F).train()
    torch.manual_seed(1)
    data_mask = torch.rand(2000, 3) > 0.3
    data_mask[:, 2] |= ~data_mask.any(dim=1)
    present = model.present_mask(data_mask)
    assert present.any(dim=1).all()
    assert not (present & ~data_mask).any()  # only drops, never invents a modality
    assert present.sum() < 0.5 * data_mask.sum()
    assert torch.equal(model.eval().present_mask(data_mask), data_mask)  # no dropout at inference


def test_single_modality_baseline_builds_only_its_encoder():
    model = build_model(tiny_spec(), num_classes=3, num_numeric_features=F, modalities=("text",))
    assert list(model.encoders) == ["text"]
    assert model(**inputs()).shape == (B, 3)


def test_builtin_configs_match_the_named_architectures():
    resnet50 = RANDOM_INIT_CONFIGS["microsoft/resnet-50"]()
    assert resnet50.hidden_sizes == [256, 512, 1024, 2048] and list(resnet50.depths) == [3, 4, 6, 3]
    bert = RANDOM_INIT_CONFIGS["bert-base-uncased"]()
    assert bert.hidden_size == 768 and bert.num_hidden_layers == 12
    assert RANDOM_INIT_CONFIGS["builtin:bert-tiny"]().vocab_size == 30522  # the builtin:minilm tokenizer's


def test_pretrained_minilm_loads_offline_with_the_bert_vocabulary():
    model = load_backbone("builtin:minilm", pretrained=True, field="spec.model.text.backbone")
    assert model.config.vocab_size == 30522 and model.config.num_hidden_layers == 6


@pytest.mark.parametrize("name", ["no-such-org/no-such-model", "builtin:resnet-tiny"])
def test_pretrained_weights_that_are_not_on_disk_fail_clearly(name):
    with pytest.raises(ModelSourceError, match=r"spec\.model\.vision\.backbone"):
        load_backbone(name, pretrained=True, field="spec.model.vision.backbone")


def test_unknown_random_init_backbone_names_the_known_ones():
    with pytest.raises(ModelSourceError, match="builtin:resnet-tiny"):
        load_backbone("nobody/nothing", pretrained=False, field="spec.model.vision.backbone")


def test_checkpoint_rebuilds_the_model_without_any_backbone_source(tmp_path):
    from kubefusion.train.checkpoint import write_model_file

    torch.manual_seed(0)
    model = build_model(tiny_spec("attention"), num_classes=4, num_numeric_features=F).eval()
    info = {**model.describe(), "classes": list("abcd"), "numeric_columns": [f"f{i}" for i in range(F)],
            "content_key": "k"}
    write_model_file(tmp_path / "model.pt", {"model": model.state_dict(), "step": 7,
                                              "config": cfg.job_to_dict(cfg.demo()), "model_info": info})
    loaded, loaded_info = load_model_from_checkpoint(tmp_path)  # a folder: finds model.pt
    assert not loaded.training
    assert loaded_info["classes"] == list("abcd") and loaded_info["step"] == 7
    assert cfg.job_from_dict(loaded_info["config"]).name == "demo"
    x = inputs()
    assert torch.equal(loaded(**x), model(**x))
    assert build_from_info(info).describe() == model.describe()


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    """A local folder with a tiny ViT config: a non-ResNet vision backbone that has a dense pooler."""
    from transformers import ViTConfig

    folder = tmp_path_factory.mktemp("vit-tiny")
    ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
              intermediate_size=32).save_pretrained(folder)
    return str(folder)


def assert_every_trainable_parameter_has_a_gradient(model):
    model.train()
    model(**inputs()).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


# DDP fails on its second step when any trainable parameter got no gradient on the first.
@pytest.mark.parametrize("text_pooling", ["cls", "mean"])
@pytest.mark.parametrize("vision_pooling", ["attention", "mean"])
@pytest.mark.parametrize("vision", ["builtin:resnet-tiny", "vit"])
def test_every_encoder_parameter_gets_a_gradient(vision, vision_pooling, text_pooling, tiny_vit):
    spec = tiny_spec("concat")
    spec.vision.backbone = tiny_vit if vision == "vit" else vision
    spec.vision.pooling, spec.text.pooling = vision_pooling, text_pooling
    torch.manual_seed(0)
    assert_every_trainable_parameter_has_a_gradient(build_model(spec, num_classes=3, num_numeric_features=F))


@pytest.mark.parametrize("modalities", [("image", "text", "numeric"), ("image",), ("text",), ("numeric",)])
@pytest.mark.parametrize("fusion", ["concat", "gated", "attention"])
def test_every_fusion_parameter_gets_a_gradient(fusion, modalities, tiny_vit):
    spec = tiny_spec(fusion, modality_dropout=0.5)
    spec.vision.backbone, spec.vision.pooling, spec.text.pooling = tiny_vit, "mean", "mean"
    torch.manual_seed(0)
    assert_every_trainable_parameter_has_a_gradient(
        build_model(spec, num_classes=3, num_numeric_features=F, modalities=modalities))


def test_a_frozen_backbone_keeps_its_batchnorm_statistics_while_the_model_trains():
    from kubefusion.train.optim import build_optimizer, freeze_backbones

    spec = tiny_spec()
    spec.vision.freeze = True
    model = build_model(spec, num_classes=3, num_numeric_features=F)
    freeze_backbones(model, spec)
    model.train()
    backbone = model.encoders["image"].backbone
    assert not backbone.training and model.encoders["image"].project.training
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    assert before
    optimizer = build_optimizer(model, spec, cfg.TrainingConfig())
    model(**inputs()).sum().backward()
    optimizer.step()
    after = backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_local_backbone_folder_that_does_not_exist_is_named_as_such(tmp_path):
    from kubefusion.model import check_model_sources

    spec = tiny_spec()
    spec.vision.backbone, spec.vision.pretrained = str(tmp_path / "resnet-50"), True
    with pytest.raises(ModelSourceError) as caught:
        check_model_sources(spec)
    message = str(caught.value)
    assert message.startswith("spec.model.vision.backbone: the folder") and "does not exist" in message
    assert "Repo id" not in message and "\n" not in message


def test_an_empty_backbone_folder_names_the_files_it_lacks(tmp_path):
    from transformers import BertConfig

    for pretrained, lacking in ((True, "no config.json and no model weights"), (False, "no config.json")):
        with pytest.raises(ModelSourceError, match=lacking):
            load_backbone(str(tmp_path), pretrained=pretrained, field="spec.model.text.backbone")
    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32).save_pretrained(tmp_path)
    with pytest.raises(ModelSourceError, match=r"has no model weights \(model.safetensors"):
        load_backbone(str(tmp_path), pretrained=True, field="spec.model.text.backbone")
    assert load_backbone(str(tmp_path), pretrained=False, field="f").config.hidden_size == 16


def test_checking_model_sources_needs_neither_torch_nor_the_weights():
    import subprocess
    import sys

    code = ("import sys; from kubefusion import config; from kubefusion.model import check_model_sources; "
            "check_model_sources(config.demo().model); print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
